import { create, toBinary, type DescMessage, type DescMethod, type DescMethodStreaming, type DescMethodUnary, type DescService } from "@bufbuild/protobuf";
import { raceSignal } from "./abort.js";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  type ContextValues,
  type Interceptor,
  type ServiceImpl,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import { runStreamingCall, runUnaryCall } from "@connectrpc/connect/protocol";
import { toConnectError } from "./errors.js";
import { invokeStream, invokeUnary, methodImplOf, type AnyImpl } from "./grpc-adapter.js";
import { loggerKey } from "./request-log.js";

/**
 * The abort reason of a handler context whose call has ended. One instance: it is only ever a
 * signal reason read by listeners after the call is over, and a ConnectError per call (with its
 * captured stack) showed up in the order bench's profile.
 */
const CALL_COMPLETED = new ConnectError("call completed", Code.Canceled);

export interface LocalTransportOptions {
  desc: DescService;
  impl: Partial<ServiceImpl<DescService>>;
  /** Server-side interceptors (request log, auth), first = outermost, exactly as the listeners run them. */
  serverInterceptors: Interceptor[];
  /** Client-side interceptors (the service bearer token). */
  clientInterceptors?: Interceptor[];
  /** Transport for what is not called directly (client and bidi streaming), made on first use. */
  fallback: () => Transport;
}

/** HandlerContext.protocolName of calls made through this transport. */
export const LOCAL_PROTOCOL = "in-process";

/**
 * A Connect Transport that calls a co-hosted service implementation directly: no serialisation,
 * no envelopes, no HTTP. Each call gets its own HandlerContext (request headers after the client
 * interceptors, e.g. the service bearer token; fresh context values; a signal that aborts on the
 * caller's abort or deadline; timeoutMs) and runs the same server interceptor chain as the
 * listeners, so authentication and the request log behave as over the wire. Unary and
 * server-streaming calls go direct; client and bidi streaming use the fallback transport.
 *
 * Errors reach the caller as a new ConnectError with the code, raw message, details (in their
 * wire form) and metadata (response headers, trailers, error metadata) the caller would get over
 * gRPC; anything that is not a ConnectError or domain error becomes INTERNAL "internal error",
 * its cause logged with the request logger, never passed on.
 *
 * Isolation contract (messages are plain objects, passed by reference, not copied): the handler
 * receives the caller's request message -- or, when the caller passed an init object, the message
 * create() built from it, which still shares any complete nested messages -- and the caller
 * receives the very message the handler returned. Both sides therefore treat a message as
 * read-only once it crosses: a handler must not modify its request or keep and later modify a
 * message it returned (e.g. one held in a cache), and a caller must not modify a request while
 * the call runs. dabba's handlers build responses fresh and only read requests; copying (create()
 * does not deep-copy, clone() costs about as much as the binary round trip it replaces) would buy
 * nothing for them. The message-size limit of the listeners does not apply in-process.
 */
export function createLocalTransport(opts: LocalTransportOptions): Transport {
  const { desc, serverInterceptors } = opts;
  const clientInterceptors = opts.clientInterceptors ?? [];
  const impls = new Map<DescMethod, AnyImpl>();
  for (const m of desc.methods) impls.set(m, methodImplOf(desc, m, opts.impl));
  let fallback: Transport | undefined;

  const contextFor = (method: DescMethod, timeoutMs: number | undefined, signal: AbortSignal, header: Headers) =>
    createHandlerContext({
      service: desc,
      method,
      protocolName: LOCAL_PROTOCOL,
      requestMethod: "POST",
      url: `/${desc.typeName}/${method.name}`,
      timeoutMs,
      requestSignal: signal,
      requestHeader: header,
      contextValues: createContextValues(),
    });
  const implOf = (method: DescMethod): AnyImpl => {
    const impl = impls.get(method);
    if (!impl) throw new ConnectError(`${method.parent.typeName}.${method.name} is not a method of ${desc.typeName}`, Code.Unimplemented);
    return impl;
  };

  return {
    unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeadersInit | undefined,
      input: Parameters<Transport["unary"]>[4],
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      return runUnaryCall<I, O>({
        interceptors: clientInterceptors,
        signal,
        timeoutMs,
        req: {
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: `${LOCAL_PROTOCOL}:/${method.parent.typeName}/${method.name}`,
          header: new Headers(header),
          contextValues: contextValues ?? createContextValues(),
          message: input as never,
        },
        next: async (req) => {
          const impl = implOf(method);
          const ctx = contextFor(method, timeoutMs, req.signal, req.header);
          try {
            const res = await raceSignal(req.signal, invokeUnary(ctx, impl, serverInterceptors, req.message));
            return { stream: false, service: method.parent, method, header: ctx.responseHeader, trailer: ctx.responseTrailer, message: res.message } as UnaryResponse<I, O>;
          } catch (err) {
            throw callerError(err, ctx, req.signal);
          } finally {
            ctx.abort(CALL_COMPLETED);
          }
        },
      });
    },

    stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeadersInit | undefined,
      input: Parameters<Transport["stream"]>[4],
      contextValues?: ContextValues,
    ): Promise<StreamResponse<I, O>> {
      if (method.methodKind != "server_streaming") {
        fallback ??= opts.fallback();
        return fallback.stream(method, signal, timeoutMs, header, input as never, contextValues);
      }
      return runStreamingCall<I, O>({
        interceptors: clientInterceptors,
        signal,
        timeoutMs,
        req: {
          stream: true,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: `${LOCAL_PROTOCOL}:/${method.parent.typeName}/${method.name}`,
          header: new Headers(header),
          contextValues: contextValues ?? createContextValues(),
          message: input as never,
        },
        next: async (req) => {
          const impl = implOf(method);
          const ctx = contextFor(method, timeoutMs, req.signal, req.header);
          const completed = () => ctx.abort(CALL_COMPLETED);
          let it: AsyncIterator<unknown>;
          let head: IteratorResult<unknown>;
          try {
            const res = await raceSignal(req.signal, invokeStream(ctx, impl, serverInterceptors, req.message));
            it = res.message[Symbol.asyncIterator]();
            // Over the wire the call is answered once the first message (or the status) arrives,
            // with the response headers the handler set before it: read ahead by one to match.
            head = await raceSignal(req.signal, it.next());
          } catch (err) {
            completed();
            throw callerError(err, ctx, req.signal);
          }
          let pending: IteratorResult<unknown> | undefined = head;
          let ended = false;
          // A caller that stopped reading and then aborts (or whose deadline passes) has no read
          // pending to notice it: end the call here too, as a network transport's RST_STREAM would.
          const onCallerAbort = () => {
            end();
            void it.return?.()?.catch(() => {});
          };
          const end = () => {
            if (ended) return;
            ended = true;
            req.signal.removeEventListener("abort", onCallerAbort);
            completed();
          };
          if (req.signal.aborted) onCallerAbort();
          else req.signal.addEventListener("abort", onCallerAbort, { once: true });
          const messages: AsyncIterable<unknown> = {
            [Symbol.asyncIterator]: () => ({
              async next(): Promise<IteratorResult<unknown>> {
                if (ended) return { done: true, value: undefined };
                let r: IteratorResult<unknown>;
                try {
                  if (pending) {
                    r = pending;
                    pending = undefined;
                  } else {
                    r = await raceSignal(req.signal, it.next());
                  }
                } catch (err) {
                  end();
                  // The handler may still be suspended (the caller went away): let it finish.
                  void it.return?.()?.catch(() => {});
                  throw callerError(err, ctx, req.signal);
                }
                if (r.done) end();
                return r;
              },
              async return(): Promise<IteratorResult<unknown>> {
                end();
                void it.return?.()?.catch(() => {});
                return { done: true, value: undefined };
              },
            }),
          };
          return { stream: true, service: method.parent, method, header: ctx.responseHeader, trailer: ctx.responseTrailer, message: messages } as StreamResponse<I, O>;
        },
      });
    },
  };
}

/**
 * What the caller sees for something thrown on the serving side: a fresh ConnectError as the
 * gRPC client would build it from the status (code, raw message, details as type + bytes,
 * metadata from response headers, trailers and the error's own metadata). When the caller aborted
 * or its deadline passed, the abort reason is passed on for runUnaryCall/runStreamingCall to map,
 * as they do for every transport.
 */
function callerError(err: unknown, ctx: { signal: AbortSignal; values: ContextValues; responseHeader: Headers; responseTrailer: Headers; service: DescService; method: DescMethod }, callerSignal: AbortSignal): unknown {
  if (callerSignal.aborted) return callerSignal.reason;
  // A handler failing because its own deadline passed reports that deadline, as the adapter does.
  const reason = !(err instanceof ConnectError) && ctx.signal.aborted ? ctx.signal.reason : err;
  const { error, internal } = toConnectError(reason);
  if (internal !== undefined) {
    ctx.values.get(loggerKey).error({ err: internal, rpc: `${ctx.service.typeName}/${ctx.method.name}` }, "internal error in handler");
  }
  const metadata = new Headers(ctx.responseHeader);
  ctx.responseTrailer.forEach((v, k) => metadata.set(k, v));
  error.metadata.forEach((v, k) => metadata.set(k, v));
  const details = error.details.map((d) =>
    "desc" in d ? { type: d.desc.typeName, value: toBinary(d.desc, create(d.desc, d.value as never)), debug: undefined } : d,
  );
  const out = new ConnectError(error.rawMessage, error.code, metadata);
  out.details = details;
  return out;
}

