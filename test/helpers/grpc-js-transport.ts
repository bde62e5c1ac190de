import { create, fromBinary, toBinary, type DescMessage, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";

/**
 * A Connect Transport backed by an @grpc/grpc-js client channel, so the same generated Connect
 * client code can run over grpc-js (as plain-gRPC driver apps do) and over connect-node's
 * transports in one test. Supports unary, server-streaming and client-streaming calls.
 */
export function createGrpcJsTransport(address: string): Transport & { close(): void } {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const codec = (method: DescMethod) => ({
    path: `/${method.parent.typeName}/${method.name}`,
    serialize: (m: unknown) => Buffer.from(toBinary(method.input, create(method.input, m as never) as never)),
    deserialize: (b: Buffer) => fromBinary(method.output, b),
  });
  const metadata = (header: HeadersInit | undefined) => {
    const md = new grpc.Metadata();
    new Headers(header).forEach((v, k) => md.add(k, v));
    return md;
  };
  const options = (timeoutMs: number | undefined): grpc.CallOptions => (timeoutMs ? { deadline: Date.now() + timeoutMs } : {});
  const toHeaders = (md: grpc.Metadata) => {
    const h = new Headers();
    for (const [k, v] of Object.entries(md.getMap())) if (typeof v === "string") h.append(k, v);
    return h;
  };
  const toError = (err: grpc.ServiceError) => new ConnectError(err.details, err.code as number as Code, toHeaders(err.metadata ?? new grpc.Metadata()));

  return {
    close: () => client.close(),
    unary(method, signal, timeoutMs, header, input) {
      const c = codec(method);
      return new Promise((resolve, reject) => {
        let responseHeader = new Headers();
        const call = client.makeUnaryRequest(c.path, c.serialize, c.deserialize, input, metadata(header), options(timeoutMs), (err, value) => {
          if (err) return reject(toError(err));
          resolve({ stream: false, service: method.parent, method, header: responseHeader, trailer: new Headers(), message: value as never });
        });
        call.on("metadata", (md) => (responseHeader = toHeaders(md)));
        signal?.addEventListener("abort", () => call.cancel());
      });
    },
    async stream(method, signal, timeoutMs, header, input) {
      const c = codec(method);
      if (method.methodKind === "server_streaming") {
        let first: unknown;
        for await (const m of input) {
          first = m;
          break;
        }
        const call = client.makeServerStreamRequest(c.path, c.serialize, c.deserialize, first as DescMessage, metadata(header), options(timeoutMs));
        signal?.addEventListener("abort", () => call.cancel());
        async function* messages() {
          try {
            for await (const m of call) yield m;
          } catch (err) {
            throw toError(err as grpc.ServiceError);
          }
        }
        return { stream: true, service: method.parent, method, header: new Headers(), trailer: new Headers(), message: messages() as never };
      }
      if (method.methodKind === "client_streaming") {
        let done!: (v: unknown) => void;
        let fail!: (e: unknown) => void;
        const result = new Promise((res, rej) => ((done = res), (fail = rej)));
        const call = client.makeClientStreamRequest(c.path, c.serialize, c.deserialize, metadata(header), options(timeoutMs), (err, value) =>
          err ? fail(toError(err)) : done(value),
        );
        signal?.addEventListener("abort", () => call.cancel());
        for await (const m of input) {
          if (!call.write(m)) await new Promise((r) => call.once("drain", r));
        }
        call.end();
        const value = await result;
        async function* one() {
          yield value;
        }
        return { stream: true, service: method.parent, method, header: new Headers(), trailer: new Headers(), message: one() as never };
      }
      throw new ConnectError("bidi streaming is not supported by this test transport", Code.Unimplemented);
    },
  };
}
