import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type DescMethod, type DescService, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  decodeBinaryHeader,
  encodeBinaryHeader,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type StreamRequest,
  type StreamResponse,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import type { Readable } from "node:stream";
import { toConnectError } from "./errors.js";
import type { Logger } from "./logger.js";
import type { CallTracker } from "./host.js";

/**
 * The abort reason of a handler context whose call has ended. One instance: it is only ever a
 * signal reason read by listeners after the call is over, and a ConnectError per call (with its
 * captured stack) showed up in the order bench's profile.
 */
const CALL_COMPLETED = new ConnectError("call completed", Code.Canceled);

export interface MountOptions {
  /** The same Connect interceptor chain the web router runs (first = outermost). */
  interceptors: Interceptor[];
  logger: Logger;
  /** Largest accepted request message; enforced by the server option grpc.max_receive_message_length. */
  maxMessageBytes: number;
  tracker: CallTracker;
}

/** grpc-js server options that enforce the message limit on the gRPC port (RESOURCE_EXHAUSTED). */
export function grpcServerOptions(maxMessageBytes: number): grpc.ServerOptions {
  return {
    "grpc.max_receive_message_length": maxMessageBytes,
    "grpc.max_send_message_length": -1,
  };
}

/** A method implementation with its message types erased. */
export type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;
type AnyFn = (req: UnaryRequest | StreamRequest) => Promise<UnaryResponse | StreamResponse>;
type ServerCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>;

/**
 * Mounts a Connect service implementation on a grpc-js server: one grpc-js handler per method
 * of desc, running the same interceptors as the Connect router, with headers, deadlines,
 * cancellation, errors and backpressure translated between the two worlds.
 */
export function mountService(
  server: grpc.Server,
  desc: DescService,
  impl: Partial<ServiceImpl<DescService>>,
  opts: MountOptions,
): void {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of desc.methods) {
    definition[method.localName] = methodDefinition(desc, method);
    handlers[method.localName] = createHandler(desc, method, methodImplOf(desc, method, impl), opts);
  }
  server.addService(definition as grpc.ServiceDefinition, handlers);
}

/** The implementation of one method, bound to impl; UNIMPLEMENTED when impl lacks it. */
export function methodImplOf(desc: DescService, method: DescMethod, impl: Partial<ServiceImpl<DescService>>): AnyImpl {
  const fn = (impl as Record<string, unknown>)[method.localName];
  if (typeof fn == "function") return fn.bind(impl) as AnyImpl;
  return () => {
    throw new ConnectError(`${desc.typeName}.${method.name} is not implemented`, Code.Unimplemented);
  };
}

// ------------------------------------------------------------------------------------------
// Running a call through the server interceptor chain into the implementation. Shared by the
// grpc-js adapter and the in-process transport (local-transport.ts), so both hand handlers and
// interceptors the same UnaryRequest/StreamRequest shapes.

/** The handler's view of the call: headers, signal and values may be replaced by interceptors. */
function mergeContext(ctx: HandlerContext, req: UnaryRequest | StreamRequest): HandlerContext {
  return { ...ctx, service: req.service, requestHeader: req.header, signal: req.signal, values: req.contextValues };
}

function requestCommon(ctx: HandlerContext) {
  return {
    service: ctx.service,
    requestMethod: ctx.requestMethod,
    url: ctx.url,
    signal: ctx.signal,
    header: ctx.requestHeader,
    contextValues: ctx.values,
  };
}

/**
 * Runs a unary call: the interceptors (first = outermost), then impl; the output is normalized
 * with create(). Response headers and trailers end up in ctx.responseHeader/responseTrailer.
 */
export async function invokeUnary(ctx: HandlerContext, impl: AnyImpl, interceptors: Interceptor[], message: unknown): Promise<UnaryResponse> {
  const method = ctx.method;
  const output = method.output;
  const anyFn: AnyFn = async (req) => {
    const out = await impl((req as UnaryRequest).message, mergeContext(ctx, req));
    return { service: ctx.service, header: ctx.responseHeader, trailer: ctx.responseTrailer, stream: false, method, message: create(output, out as never) } as UnaryResponse;
  };
  const res = (await applyInterceptors(anyFn, interceptors)({ ...requestCommon(ctx), stream: false, method, message } as UnaryRequest)) as UnaryResponse;
  copyHeaders(res.header, ctx.responseHeader);
  copyHeaders(res.trailer, ctx.responseTrailer);
  return res;
}

/**
 * Starts a streaming call (server, client or bidi) through the interceptors; output messages are
 * normalized with create() as they are read. A client-streaming call answers with a one-message
 * stream. Response headers are copied into ctx.responseHeader here; trailers are for the caller
 * to copy once the stream is read.
 */
export async function invokeStream(ctx: HandlerContext, impl: AnyImpl, interceptors: Interceptor[], input: AsyncIterable<unknown>): Promise<StreamResponse> {
  const method = ctx.method;
  const kind = method.methodKind;
  const output = method.output;
  const anyFn: AnyFn = async (req) => {
    const merged = mergeContext(ctx, req);
    const reqs = (req as StreamRequest).message;
    let out: AsyncIterable<unknown>;
    if (kind == "client_streaming") out = single(create(output, (await impl(reqs, merged)) as never));
    else if (kind == "server_streaming") out = normalized(output, impl(await first(reqs, "server-streaming"), merged) as AsyncIterable<unknown>);
    else out = normalized(output, impl(reqs, merged) as AsyncIterable<unknown>);
    return { service: ctx.service, header: ctx.responseHeader, trailer: ctx.responseTrailer, stream: true, method, message: out } as StreamResponse;
  };
  const res = (await applyInterceptors(anyFn, interceptors)({ ...requestCommon(ctx), stream: true, method, message: input } as StreamRequest)) as StreamResponse;
  copyHeaders(res.header, ctx.responseHeader);
  return res;
}

/** Output messages normalized with create() (a no-op for complete messages), keeping return/throw of the source. */
function normalized(desc: DescMessage, messages: AsyncIterable<unknown>): AsyncIterable<unknown> {
  return {
    [Symbol.asyncIterator]() {
      const it = messages[Symbol.asyncIterator]();
      const map = (r: IteratorResult<unknown>): IteratorResult<unknown> => (r.done ? r : { done: false, value: create(desc, r.value as never) });
      const out: AsyncIterator<unknown> = { next: () => it.next().then(map) };
      if (it.return) out.return = (v?: unknown) => it.return!(v).then(map);
      if (it.throw) out.throw = (e?: unknown) => it.throw!(e).then(map);
      return out;
    },
  };
}

function methodDefinition(desc: DescService, method: DescMethod): grpc.MethodDefinition<unknown, unknown> {
  const input = method.input;
  const output = method.output;
  return {
    path: `/${desc.typeName}/${method.name}`,
    originalName: method.localName,
    requestStream: method.methodKind == "client_streaming" || method.methodKind == "bidi_streaming",
    responseStream: method.methodKind == "server_streaming" || method.methodKind == "bidi_streaming",
    requestSerialize: (m: unknown) => asBuffer(toBinary(input, create(input, m as MessageShape<DescMessage>))),
    requestDeserialize: (b: Buffer) => fromBinary(input, b),
    responseSerialize: (m: unknown) => asBuffer(toBinary(output, create(output, m as MessageShape<DescMessage>))),
    responseDeserialize: (b: Buffer) => fromBinary(output, b),
  };
}

/** Reserved HTTP/2 and gRPC headers a handler must not copy into metadata. */
function isReservedHeader(key: string): boolean {
  return (
    key.startsWith(":") ||
    key.startsWith("grpc-") ||
    key == "content-type" ||
    key == "te" ||
    key == "connection" ||
    key == "transfer-encoding" ||
    key == "user-agent"
  );
}

/** grpc metadata -> Fetch Headers; binary (-bin) values become base64 as on the gRPC wire. */
export function metadataToHeaders(md: grpc.Metadata): Headers {
  const headers = new Headers();
  for (const [key, values] of Object.entries(md.toJSON())) {
    for (const v of values) {
      try {
        headers.append(key, typeof v == "string" ? v : encodeBinaryHeader(v));
      } catch {
        // A value Headers refuses (control characters) cannot reach a handler; drop it.
      }
    }
  }
  return headers;
}

/** Fetch Headers -> grpc metadata; -bin values are base64-decoded. */
export function headersToMetadata(headers: Headers): grpc.Metadata {
  const md = new grpc.Metadata();
  headers.forEach((value, key) => {
    if (isReservedHeader(key)) return;
    try {
      if (key.endsWith("-bin")) {
        for (const part of value.split(",")) md.add(key, Buffer.from(decodeBinaryHeader(part.trim())));
      } else {
        md.add(key, value);
      }
    } catch {
      // Invalid metadata keys or values are dropped rather than failing the call.
    }
  });
  return md;
}

function timeoutOf(call: ServerCall): number | undefined {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return undefined;
  return Math.max(0, at - Date.now());
}

/** Abortable, backpressure-respecting view of a grpc-js readable stream of request messages. */
function requestMessages(stream: Readable, signal: AbortSignal): AsyncIterable<unknown> {
  return {
    [Symbol.asyncIterator]() {
      let ended = false;
      let failure: unknown;
      let wake: (() => void) | undefined;
      const notify = () => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      const onEnd = () => {
        ended = true;
        notify();
      };
      const onError = (err: unknown) => {
        failure = err;
        notify();
      };
      stream.on("readable", notify);
      stream.on("end", onEnd);
      stream.on("error", onError);
      signal.addEventListener("abort", notify);
      const cleanup = () => {
        stream.off("readable", notify);
        stream.off("end", onEnd);
        stream.off("error", onError);
        signal.removeEventListener("abort", notify);
      };
      return {
        async next(): Promise<IteratorResult<unknown>> {
          for (;;) {
            if (signal.aborted) {
              cleanup();
              throw ConnectError.from(signal.reason, Code.Canceled);
            }
            // read() pulls one message and lets grpc-js ask the peer for the next one only
            // when the buffer drains: that is the backpressure.
            const value: unknown = stream.read();
            if (value !== null) return { value, done: false };
            if (ended || stream.readableEnded) {
              cleanup();
              return { value: undefined, done: true };
            }
            if (failure !== undefined || stream.destroyed) {
              cleanup();
              throw ConnectError.from(failure ?? signal.reason, Code.Canceled);
            }
            await new Promise<void>((resolve) => (wake = resolve));
          }
        },
        async return(): Promise<IteratorResult<unknown>> {
          cleanup();
          return { value: undefined, done: true };
        },
      };
    },
  };
}

async function* single<T>(value: T): AsyncIterable<T> {
  yield value;
}

async function first<T>(iterable: AsyncIterable<T>, what: string): Promise<T> {
  for await (const v of iterable) return v;
  throw new ConnectError(`protocol error: missing input message for ${what} method`, Code.Unimplemented);
}

function copyHeaders(from: Headers, to: Headers): void {
  if (from === to) return;
  for (const key of [...to.keys()]) to.delete(key);
  from.forEach((value, key) => to.set(key, value));
}

/** Interceptors wrap in array order: the first one is the outermost, as in connect-es. */
function applyInterceptors(fn: AnyFn, interceptors: Interceptor[]): AnyFn {
  return interceptors.reduceRight<AnyFn>((next, interceptor) => interceptor(next) as AnyFn, fn);
}

function createHandler(desc: DescService, method: DescMethod, impl: AnyImpl, opts: MountOptions): grpc.UntypedHandleCall {
  const { logger, tracker } = opts;
  const kind = method.methodKind;
  const path = `/${desc.typeName}/${method.name}`;

  return (call: ServerCall, callback?: grpc.sendUnaryData<unknown>) => {
    const done = tracker.begin(kind == "unary" ? "unary" : "stream");
    const cancel = new AbortController();
    const ctx = createHandlerContext({
      service: desc,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: path,
      timeoutMs: timeoutOf(call),
      requestSignal: cancel.signal,
      requestHeader: metadataToHeaders(call.metadata),
      contextValues: createContextValues(),
    });
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      ctx.abort(CALL_COMPLETED);
      done();
    };
    (call as NodeJS.EventEmitter).on("cancelled", () => {
      // grpc-js ends a call whose deadline passed itself, which reaches us as a cancellation
      // a moment before our own deadline timer fires; and a client's own deadline timer sends
      // its cancellation up to the time the request took to arrive (tens of ms on a busy
      // machine) before ours. A cancellation that close to the deadline is the deadline.
      const left = ctx.timeoutMs();
      cancel.abort(
        left !== undefined && left <= DEADLINE_SLACK_MS
          ? new ConnectError("the operation timed out", Code.DeadlineExceeded)
          : new ConnectError("call cancelled by the client", Code.Canceled),
      );
      finish();
    });

    const status = (err: unknown): grpc.StatusObject => {
      // When the deadline passed or the client cancelled, whatever the handler threw as a
      // consequence (an AbortError, say) is reported as that cause.
      const reason = !(err instanceof ConnectError) && ctx.signal.aborted ? ctx.signal.reason : err;
      const { error, internal } = toConnectError(reason);
      if (internal !== undefined) logger.error({ err: internal, rpc: path }, "internal error in handler");
      const md = headersToMetadata(ctx.responseTrailer);
      mergeMetadata(md, headersToMetadata(error.metadata));
      return { code: error.code as number as grpc.status, details: error.rawMessage, metadata: md };
    };

    let headersSent = false;
    const sendHeaders = () => {
      if (headersSent) return;
      headersSent = true;
      const md = headersToMetadata(ctx.responseHeader);
      if (Object.keys(md.toJSON()).length) call.sendMetadata(md);
    };

    if (kind == "unary") {
      const c = call as grpc.ServerUnaryCall<unknown, unknown>;
      invokeUnary(ctx, impl, opts.interceptors, c.request)
        .then((res) => {
          if (finished) return;
          sendHeaders();
          callback!(null, res.message, headersToMetadata(ctx.responseTrailer));
        })
        .catch((err: unknown) => {
          const s = status(err);
          if (finished) return;
          sendHeaders();
          callback!({ code: s.code, details: s.details, metadata: s.metadata });
        })
        .finally(finish);
      return;
    }

    if (kind == "client_streaming") {
      const c = call as grpc.ServerReadableStream<unknown, unknown>;
      (async () => {
        const res = await invokeStream(ctx, impl, opts.interceptors, requestMessages(c, ctx.signal));
        const message = await first(res.message as AsyncIterable<unknown>, "client-streaming");
        copyHeaders(res.trailer, ctx.responseTrailer);
        return message;
      })()
        .then((message) => {
          if (finished) return;
          sendHeaders();
          callback!(null, message, headersToMetadata(ctx.responseTrailer));
        })
        .catch((err: unknown) => {
          const s = status(err);
          if (finished) return;
          sendHeaders();
          callback!({ code: s.code, details: s.details, metadata: s.metadata });
        })
        .finally(finish);
      return;
    }

    // Server streaming and bidi: the response is written with backpressure.
    const c = call as grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;
    const input: AsyncIterable<unknown> =
      kind == "server_streaming"
        ? single((c as grpc.ServerWritableStream<unknown, unknown>).request)
        : requestMessages(c as grpc.ServerDuplexStream<unknown, unknown>, ctx.signal);
    (async () => {
      const res = await invokeStream(ctx, impl, opts.interceptors, input);
      const it = res.message[Symbol.asyncIterator]();
      // Each message is written inside the callback and never held by this function: a
      // suspended loop would otherwise keep a long-lived stream's last message (e.g. a
      // TrackOrder snapshot with its whole order) alive until the next one.
      const step = (): Promise<Step> =>
        it.next().then((r) => {
          if (r.done) return "done";
          if (finished || c.cancelled || c.destroyed) return "gone";
          sendHeaders();
          return c.write(r.value) ? "wrote" : "full";
        });
      for (;;) {
        const s = await step();
        if (s === "done") break;
        if (s === "gone") {
          void it.return?.()?.catch(() => {});
          break;
        }
        if (s === "full") await drained(c, ctx.signal);
      }
      copyHeaders(res.trailer, ctx.responseTrailer);
    })()
      .then(() => {
        if (finished || c.cancelled || c.destroyed) return;
        if (ctx.signal.aborted) throw ctx.signal.reason;
        sendHeaders();
        c.end(headersToMetadata(ctx.responseTrailer));
      })
      .catch((err: unknown) => {
        const s = status(err);
        if (finished || c.cancelled || c.destroyed) return;
        sendHeaders();
        c.emit("error", { code: s.code, details: s.details, metadata: s.metadata });
      })
      .finally(() => {
        if (finished) return;
        // Release the call only once grpc-js has sent the status.
        if (c.writableFinished || c.destroyed) finish();
        else {
          c.once("finish", finish);
          c.once("close", finish);
          ctx.signal.addEventListener("abort", finish, { once: true });
        }
      });
  };
}

/** A Buffer view of the encoded bytes (no copy). */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** A cancellation this close to the call's deadline is reported as the deadline. */
const DEADLINE_SLACK_MS = 100;

/** What writing one response message did (see the server-streaming write loop). */
type Step = "done" | "gone" | "wrote" | "full";

function mergeMetadata(into: grpc.Metadata, from: grpc.Metadata): void {
  for (const [key, values] of Object.entries(from.toJSON())) {
    if (into.get(key).length) continue;
    for (const v of values) into.add(key, v);
  }
}

/** Waits for 'drain' (the peer read enough) or for the call to end. */
function drained(stream: NodeJS.EventEmitter & { destroyed: boolean }, signal: AbortSignal): Promise<void> {
  if (signal.aborted || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const settle = () => {
      stream.off("drain", settle);
      stream.off("close", settle);
      stream.off("cancelled", settle);
      signal.removeEventListener("abort", settle);
      resolve();
    };
    stream.on("drain", settle);
    stream.on("close", settle);
    stream.on("cancelled", settle);
    signal.addEventListener("abort", settle);
  });
}
