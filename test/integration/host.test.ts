// Fixture code in test/fixtures/gen is generated with: cd test/fixtures && npx buf generate
import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { until } from "../helpers/wait.js";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { service as healthDefinition } from "grpc-health-check";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  createContextKey,
  decodeBinaryHeader,
  encodeBinaryHeader,
  type Client,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import {
  EchoService,
  SayRequestSchema,
  type ChatRequest,
  type CollectRequest,
  type CountRequest,
  type SayRequest,
} from "../fixtures/gen/dabba/echo/v1/echo_pb.js";
import { testConfig, type Config } from "../../services/platform/config.js";
import { metadataToHeaders } from "../../services/platform/grpc-adapter.js";
import { createHost, type Host } from "../../services/platform/host.js";
import type { Logger } from "../../services/platform/logger.js";
import { loggerKey, loggingInterceptor, requestIdKey } from "../../services/platform/request-log.js";
import type { ServiceModule, ServiceName } from "../../services/platform/service.js";
import { expectCode } from "../helpers/expect.js";

const execFileAsync = promisify(execFile);
const ECHO = "dabba.echo.v1.EchoService";

// --- the EchoService fixture: one Connect implementation, instrumented -----------------------

/** What handlers report to the tests: stream progress and how calls ended. */
class Probe extends EventEmitter {
  /** Count responses handed to the adapter/router (the handler resumed after each yield). */
  countYielded = 0;
}

/** Set by the test interceptor below, read by the handler: context values cross both ports. */
const tagKey = createContextKey<string>("");

const tagInterceptor: Interceptor = (next) => async (req) => {
  req.contextValues.set(tagKey, req.header.get("x-tag") ?? "");
  return next(req);
};

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return sleep(ms, undefined, { signal }).catch(() => {
    throw ConnectError.from(signal.reason);
  });
}

function echoImpl(probe: Probe): Partial<ServiceImpl<typeof EchoService>> {
  return {
    async say(req: SayRequest, ctx: HandlerContext) {
      ctx.responseHeader.set("x-echo", ctx.requestHeader.get("x-echo") ?? "");
      ctx.responseHeader.set("x-tag-seen", ctx.values.get(tagKey));
      ctx.responseHeader.set("x-request-id-seen", ctx.values.get(requestIdKey));
      const bin = ctx.requestHeader.get("x-data-bin");
      if (bin !== null) ctx.responseHeader.set("x-data-bin", bin);
      ctx.responseTrailer.set("x-trailer", "t-" + req.text);
      ctx.values.get(loggerKey).info("in handler");
      if (req.delay) {
        const ms = Number(req.delay.seconds) * 1000 + req.delay.nanos / 1e6;
        try {
          await abortableSleep(ms, ctx.signal);
        } catch (err) {
          probe.emit("say-aborted", ConnectError.from(ctx.signal.reason));
          throw err;
        }
      }
      if (req.failCode) throw new ConnectError(req.failMessage, req.failCode as Code);
      if (req.failInternal) throw new Error("secret: db password is hunter2");
      return { text: req.text };
    },
    async *count(req: CountRequest, ctx: HandlerContext) {
      const payload = new Uint8Array(req.payloadBytes);
      const interval = req.interval ? Number(req.interval.seconds) * 1000 + req.interval.nanos / 1e6 : 0;
      let n = 0;
      try {
        while ((req.count == 0 || n < req.count) && !ctx.signal.aborted) {
          n++;
          yield { number: n, payload };
          probe.countYielded = n;
          if (interval) await abortableSleep(interval, ctx.signal).catch(() => {});
        }
      } finally {
        probe.emit("count-ended", { aborted: ctx.signal.aborted, reason: ctx.signal.aborted ? ConnectError.from(ctx.signal.reason) : undefined, n });
      }
    },
    async collect(reqs: AsyncIterable<CollectRequest>) {
      const texts: string[] = [];
      for await (const r of reqs) texts.push(r.text);
      return { texts, count: texts.length };
    },
    async *chat(reqs: AsyncIterable<ChatRequest>) {
      let n = 0;
      for await (const r of reqs) yield { text: r.text, number: ++n };
    },
  };
}

function echoModule(probe: Probe): ServiceModule {
  return {
    name: "order" as ServiceName, // the host uses the name only to label logs
    desc: EchoService,
    impl: echoImpl(probe) as ServiceModule["impl"],
    migrations: {},
    start: async () => {},
    stop: async () => {},
  };
}

/** A pino logger whose JSON lines the test can read. */
function memoryLogger(): { logger: Logger; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.push(...chunk.toString().split("\n").filter(Boolean));
      cb();
    },
  });
  return { logger: pino({ level: "info" }, sink), lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

async function startHost(probe: Probe, config: Partial<Config> = {}) {
  const mem = memoryLogger();
  const host = createHost({
    config: testConfig(config),
    logger: mem.logger,
    modules: [echoModule(probe)],
    interceptors: [loggingInterceptor(mem.logger), tagInterceptor],
  });
  const ports = await host.start();
  return { host, ...ports, logLines: mem.lines };
}

// --- one caller interface over grpc-js and the Connect transports -----------------------------

interface CallOptions {
  headers?: Record<string, string | Uint8Array>;
  timeoutMs?: number;
}
interface SayResult {
  text: string;
  header: Headers;
  trailer: Headers;
}
interface Caller {
  say(req: MessageInitShape<typeof SayRequestSchema>, opts?: CallOptions): Promise<SayResult>;
  /** Reads a Count stream; onMessage may pause reading by returning a promise. */
  count(req: MessageInitShape<typeof import("../fixtures/gen/dabba/echo/v1/echo_pb.js").CountRequestSchema>, opts?: { signal?: AbortSignal; onMessage?: (n: number) => Promise<void> | void }): Promise<number[]>;
  collect(texts: string[]): Promise<{ texts: string[]; count: number }>;
  chat(texts: string[]): Promise<Array<{ text: string; number: number }>>;
  close(): void;
}

function connectCaller(transport: Transport): Caller {
  const client: Client<typeof EchoService> = createClient(EchoService, transport);
  const headersOf = (h: CallOptions["headers"] = {}) =>
    Object.entries(h).map(([k, v]): [string, string] => [k, typeof v == "string" ? v : encodeBinaryHeader(v)]);
  return {
    async say(req, opts = {}) {
      let header = new Headers();
      let trailer = new Headers();
      const res = await client.say(req, {
        headers: headersOf(opts.headers),
        timeoutMs: opts.timeoutMs,
        onHeader: (h) => (header = h),
        onTrailer: (t) => (trailer = t),
      });
      return { text: res.text, header, trailer };
    },
    async count(req, opts = {}) {
      const got: number[] = [];
      for await (const m of client.count(req, { signal: opts.signal })) {
        got.push(m.number);
        await opts.onMessage?.(m.number);
      }
      return got;
    },
    async collect(texts) {
      async function* reqs() {
        for (const text of texts) yield { text };
      }
      const res = await client.collect(reqs());
      return { texts: res.texts, count: res.count };
    },
    async chat(texts) {
      async function* reqs() {
        for (const text of texts) yield { text };
      }
      const out: Array<{ text: string; number: number }> = [];
      for await (const m of client.chat(reqs())) out.push({ text: m.text, number: m.number });
      return out;
    },
    close() {},
  };
}

/** A plain grpc-js client built from the same descriptors, as a driver app would use. */
function grpcJsClient(address: string): grpc.Client & Record<string, Function> {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of EchoService.methods) {
    def[m.name] = {
      path: `/${ECHO}/${m.name}`,
      requestStream: m.methodKind == "client_streaming" || m.methodKind == "bidi_streaming",
      responseStream: m.methodKind == "server_streaming" || m.methodKind == "bidi_streaming",
      requestSerialize: (v: unknown) => Buffer.from(toBinary(m.input, create(m.input, v as never))),
      requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
      responseSerialize: (v: unknown) => Buffer.from(toBinary(m.output, create(m.output, v as never))),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(def as grpc.ServiceDefinition, "EchoService");
  return new Ctor(address, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, Function>;
}

function fromServiceError(err: grpc.ServiceError): ConnectError {
  return new ConnectError(err.details, err.code as number as Code);
}

function grpcJsCaller(port: number): Caller {
  const client = grpcJsClient(`127.0.0.1:${port}`);
  return {
    say(req, opts = {}) {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(opts.headers ?? {})) md.add(k, typeof v == "string" ? v : Buffer.from(v));
      const options: grpc.CallOptions = opts.timeoutMs ? { deadline: Date.now() + opts.timeoutMs } : {};
      return new Promise((resolve, reject) => {
        let header = new Headers();
        let result: { err: grpc.ServiceError | null; text: string } | undefined;
        const call = client["Say"]!(create(SayRequestSchema, req), md, options, (err: grpc.ServiceError | null, res?: { text: string }) => {
          result = { err, text: res?.text ?? "" };
        }) as grpc.ClientUnaryCall;
        call.on("metadata", (m: grpc.Metadata) => (header = metadataToHeaders(m)));
        call.on("status", (s: grpc.StatusObject) => {
          // The callback runs before 'status'; the status carries the trailers.
          setImmediate(() => {
            if (result?.err) reject(fromServiceError(result.err));
            else resolve({ text: result?.text ?? "", header, trailer: metadataToHeaders(s.metadata) });
          });
        });
      });
    },
    count(req, opts = {}) {
      return new Promise((resolve, reject) => {
        const call = client["Count"]!(req, new grpc.Metadata()) as grpc.ClientReadableStream<{ number: number }>;
        opts.signal?.addEventListener("abort", () => call.cancel());
        const got: number[] = [];
        (async () => {
          for await (const m of call as AsyncIterable<{ number: number }>) {
            got.push(m.number);
            await opts.onMessage?.(m.number);
          }
        })().then(
          () => resolve(got),
          (err: grpc.ServiceError) => reject(fromServiceError(err)),
        );
      });
    },
    collect(texts) {
      return new Promise((resolve, reject) => {
        const call = client["Collect"]!((err: grpc.ServiceError | null, res?: { texts: string[]; count: number }) =>
          err ? reject(fromServiceError(err)) : resolve({ texts: res!.texts, count: res!.count }),
        ) as grpc.ClientWritableStream<unknown>;
        for (const text of texts) call.write({ text });
        call.end();
      });
    },
    chat(texts) {
      return new Promise((resolve, reject) => {
        const call = client["Chat"]!() as grpc.ClientDuplexStream<unknown, { text: string; number: number }>;
        const out: Array<{ text: string; number: number }> = [];
        call.on("data", (m: { text: string; number: number }) => out.push({ text: m.text, number: m.number }));
        call.on("error", (e: grpc.ServiceError) => reject(fromServiceError(e)));
        call.on("end", () => resolve(out));
        for (const text of texts) call.write({ text });
        call.end();
      });
    },
    close() {
      client.close();
    },
  };
}


// --- tests ------------------------------------------------------------------------------------

describe("platform host (grpc-js + connect-node)", function () {
  this.timeout(30_000);
  const probe = new Probe();
  let host: Host;
  let port: number;
  let webPort: number;
  let logLines: () => Array<Record<string, unknown>>;
  const callers: Record<string, Caller> = {};

  before(async () => {
    ({ host, port, webPort, logLines } = await startHost(probe));
    callers["grpc-js client -> gRPC port"] = grpcJsCaller(port);
    callers["Connect gRPC transport -> gRPC port"] = connectCaller(createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    callers["Connect gRPC transport -> web port"] = connectCaller(createGrpcTransport({ baseUrl: `http://127.0.0.1:${webPort}` }));
    callers["Connect protocol, HTTP/1.1 -> web port"] = connectCaller(
      createConnectTransport({ baseUrl: `http://127.0.0.1:${webPort}`, httpVersion: "1.1" }),
    );
    callers["Connect protocol, HTTP/2 -> web port"] = connectCaller(
      createConnectTransport({ baseUrl: `http://127.0.0.1:${webPort}`, httpVersion: "2" }),
    );
    callers["gRPC-web, HTTP/1.1 -> web port"] = connectCaller(
      createGrpcWebTransport({ baseUrl: `http://127.0.0.1:${webPort}`, httpVersion: "1.1" }),
    );
  });
  after(async () => {
    for (const c of Object.values(callers)) c.close();
    await host.stop();
  });

  const names = [
    "grpc-js client -> gRPC port",
    "Connect gRPC transport -> gRPC port",
    "Connect gRPC transport -> web port",
    "Connect protocol, HTTP/1.1 -> web port",
    "Connect protocol, HTTP/2 -> web port",
    "gRPC-web, HTTP/1.1 -> web port",
  ];

  for (const name of names) {
    describe(name, () => {
      const c = () => callers[name]!;

      it("answers all four RPC kinds the same way", async () => {
        assert.equal((await c().say({ text: "hello" })).text, "hello");
        assert.deepEqual(await c().count({ count: 5 }), [1, 2, 3, 4, 5]);
        assert.deepEqual(await c().collect(["a", "b", "c"]), { texts: ["a", "b", "c"], count: 3 });
        if (name.includes("HTTP/1.1")) {
          // Full-duplex streams need HTTP/2; connect-node answers HTTP 505 over HTTP/1.1.
          await assert.rejects(c().chat(["x", "y"]), /505/);
        } else {
          assert.deepEqual(await c().chat(["x", "y"]), [
            { text: "x", number: 1 },
            { text: "y", number: 2 },
          ]);
        }
        assert.deepEqual(await c().collect([]), { texts: [], count: 0 });
      });

      it("round-trips request headers, response headers, trailers and -bin metadata", async () => {
        const bytes = new Uint8Array([1, 2, 3, 0, 255]);
        const res = await c().say({ text: "md" }, { headers: { "x-echo": "ping", "x-data-bin": bytes, "x-tag": "t1" } });
        assert.equal(res.header.get("x-echo"), "ping");
        assert.deepEqual(decodeBinaryHeader(res.header.get("x-data-bin") ?? ""), bytes);
        assert.equal(res.trailer.get("x-trailer"), "t-md");
        assert.equal(res.header.get("x-tag-seen"), "t1", "context values set by an interceptor reach the handler");
      });

      it("echoes x-request-id and stores it in the context", async () => {
        const given = await c().say({ text: "id" }, { headers: { "x-request-id": "req-123" } });
        assert.equal(given.header.get("x-request-id"), "req-123");
        assert.equal(given.header.get("x-request-id-seen"), "req-123");
        const generated = await c().say({ text: "id" });
        assert.match(generated.header.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
      });

      it("preserves the code and message of a thrown ConnectError", async () => {
        const err = await expectCode(c().say({ text: "e", failCode: Code.NotFound, failMessage: "no such order" }), Code.NotFound);
        assert.equal(err.rawMessage, "no such order");
        await expectCode(c().say({ text: "e", failCode: Code.FailedPrecondition, failMessage: "x" }), Code.FailedPrecondition);
      });

      it("turns a plain Error into INTERNAL without leaking its message", async () => {
        const err = await expectCode(c().say({ text: "e", failInternal: true }), Code.Internal);
        assert.doesNotMatch(err.message, /secret|hunter2/);
      });

      it("rejects a message over maxMessageBytes with RESOURCE_EXHAUSTED", async () => {
        await expectCode(c().say({ text: "big", padding: new Uint8Array(100 * 1024) }), Code.ResourceExhausted);
        assert.equal((await c().say({ text: "small", padding: new Uint8Array(1024) })).text, "small");
      });

      it("answers DEADLINE_EXCEEDED when the deadline is shorter than the handler, and aborts its signal", async () => {
        const aborted = once(probe, "say-aborted");
        const started = Date.now();
        await expectCode(c().say({ text: "slow", delay: durationFromMs(5000) }, { timeoutMs: 200 }), Code.DeadlineExceeded);
        assert.ok(Date.now() - started < 2000);
        const [reason] = (await aborted) as [ConnectError];
        // The adapter reports the deadline as the abort reason. On the web port the client's own
        // deadline timer closes the request at the same moment, so connect-node's reason races
        // between DeadlineExceeded and the request being closed; the signal aborts either way.
        if (name.includes("gRPC port")) assert.equal(Code[reason.code], Code[Code.DeadlineExceeded]);
      });

      it("aborts the handler's signal when the client cancels a server stream", async () => {
        const ended = once(probe, "count-ended");
        const ac = new AbortController();
        const reading = c().count({ count: 0, interval: durationFromMs(10) }, { onMessage: (n) => void (n == 3 && ac.abort()), signal: ac.signal });
        await expectCode(reading, Code.Canceled);
        const [end] = (await ended) as [{ aborted: boolean; n: number }];
        assert.equal(end.aborted, true);
      });
    });
  }

  describe("server-stream backpressure", () => {
    for (const name of ["grpc-js client -> gRPC port", "Connect gRPC transport -> gRPC port"]) {
      it(`pauses the handler while a slow client is not reading (${name})`, async () => {
        let consumed = 0;
        let maxAhead = 0;
        const total = 10_000;
        const got = await callers[name]!.count({ count: total, payloadBytes: 1000 }, {
          async onMessage(n) {
            consumed = n;
            maxAhead = Math.max(maxAhead, probe.countYielded - consumed);
            // Stall twice: the handler must stop producing while nobody reads.
            if (n == 10 || n == 5000) {
              await sleep(300);
              maxAhead = Math.max(maxAhead, probe.countYielded - consumed);
            }
          },
        });
        assert.equal(got.length, total);
        assert.equal(got[total - 1], total);
        // ~10 MB were streamed; what the handler may run ahead is bounded by HTTP/2 flow control
        // windows and stream buffers (a few hundred 1 KB messages), not by the stream length.
        assert.ok(maxAhead < 1000, `handler ran ${maxAhead} messages ahead of the reader`);
      });
    }
  });

  describe("request logging", () => {
    it("logs one line per finished call with service, method, code, ms and request id", async () => {
      await callers["grpc-js client -> gRPC port"]!.say({ text: "log" }, { headers: { "x-request-id": "log-grpc" } });
      await callers["Connect protocol, HTTP/1.1 -> web port"]!.say({ text: "log" }, { headers: { "x-request-id": "log-web" } });
      await callers["Connect gRPC transport -> gRPC port"]!.count({ count: 2 });
      const finishedFor = (id: string) => logLines().filter((l) => l["msg"] == "rpc finished" && l["requestId"] == id);
      await until(() => finishedFor("log-grpc").length > 0 && finishedFor("log-web").length > 0, 5000, "log lines of both calls");
      const finished = logLines().filter((l) => l["msg"] == "rpc finished");
      for (const id of ["log-grpc", "log-web"]) {
        const lines = finished.filter((l) => l["requestId"] == id);
        assert.equal(lines.length, 1, `one line for ${id}`);
        assert.equal(lines[0]!["service"], ECHO);
        assert.equal(lines[0]!["method"], "Say");
        assert.equal(lines[0]!["code"], "OK");
        assert.equal(typeof lines[0]!["ms"], "number");
      }
      assert.ok(finished.some((l) => l["method"] == "Count" && l["code"] == "OK"), "streams are logged at their end");
      assert.ok(logLines().some((l) => l["msg"] == "in handler" && l["requestId"] == "log-grpc"), "handlers log with the child logger");
      assert.ok(finished.some((l) => l["code"] == "NOT_FOUND"));
      const internal = logLines().filter((l) => l["msg"] == "internal error in handler");
      assert.ok(internal.length > 0 && JSON.stringify(internal[0]).includes("hunter2"), "the INTERNAL cause is logged");
    });
  });

  describe("grpc.health.v1.Health", () => {
    const HealthClient = grpc.makeGenericClientConstructor(healthDefinition as unknown as grpc.ServiceDefinition, "Health");
    let health: grpc.Client & Record<string, Function>;
    before(() => {
      health = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, Function>;
    });
    after(() => health.close());
    const check = (service: string) =>
      new Promise<string>((resolve, reject) =>
        health["Check"]!({ service }, (err: grpc.ServiceError | null, res?: { status: string }) => (err ? reject(err) : resolve(res!.status))),
      );

    it("reports SERVING overall and per hosted service, NOT_FOUND for others", async () => {
      assert.equal(await check(""), "SERVING");
      assert.equal(await check(ECHO), "SERVING");
      await assert.rejects(check("dabba.nope.v1.NopeService"), (e: grpc.ServiceError) => e.code == grpc.status.NOT_FOUND);
    });

    it("streams status changes to Watch", async () => {
      const call = health["Watch"]!({ service: ECHO }) as grpc.ClientReadableStream<{ status: string }>;
      const seen: string[] = [];
      const changed = new Promise<void>((resolve) =>
        call.on("data", (m: { status: string }) => {
          seen.push(m.status);
          if (seen.length == 1) host.health.setServing(ECHO, false);
          if (seen.length == 2) resolve();
        }),
      );
      call.on("error", () => {});
      await changed;
      call.cancel();
      host.health.setServing(ECHO, true);
      assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
    });
  });

  describe("server reflection", () => {
    const buf = "node_modules/.bin/buf";
    for (const reflect of ["grpc-v1", "grpc-v1alpha"]) {
      it(`lists the hosted services and health (${reflect})`, async () => {
        const { stdout } = await execFileAsync(buf, [
          "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", reflect, "--list-services", `http://127.0.0.1:${port}`,
        ]);
        const services = stdout.trim().split("\n");
        assert.ok(services.includes(ECHO), stdout);
        assert.ok(services.includes("grpc.health.v1.Health"), stdout);
      });
    }
    it("describes messages well enough for buf curl to call an RPC", async () => {
      const { stdout } = await execFileAsync(buf, [
        "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", '{"text":"via reflection","delay":"0.001s"}',
        `http://127.0.0.1:${port}/${ECHO}/Say`,
      ]);
      assert.deepEqual(JSON.parse(stdout), { text: "via reflection" });
    });
  });

  describe("CORS on the web port", () => {
    it("answers a preflight with the allowed methods and headers", async () => {
      const res = await fetch(`http://127.0.0.1:${webPort}/${ECHO}/Say`, {
        method: "OPTIONS",
        headers: {
          Origin: "https://app.example",
          "Access-Control-Request-Method": "POST",
          "Access-Control-Request-Headers": "content-type,connect-protocol-version,authorization",
        },
      });
      assert.equal(res.status, 204);
      assert.equal(res.headers.get("access-control-allow-origin"), "*");
      assert.match(res.headers.get("access-control-allow-methods") ?? "", /POST/);
      const allowed = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase();
      for (const h of ["content-type", "connect-protocol-version", "x-grpc-web", "authorization"]) assert.ok(allowed.includes(h), h);
    });

    it("exposes grpc-status and x-request-id on actual responses", async () => {
      const res = await fetch(`http://127.0.0.1:${webPort}/${ECHO}/Say`, {
        method: "POST",
        headers: { Origin: "https://app.example", "Content-Type": "application/json", "Connect-Protocol-Version": "1" },
        body: JSON.stringify({ text: "cors" }),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { text: "cors" });
      const exposed = (res.headers.get("access-control-expose-headers") ?? "").toLowerCase();
      assert.ok(exposed.includes("grpc-status") && exposed.includes("x-request-id"), exposed);
    });

    it("only allows configured origins", async () => {
      const other = await startHost(new Probe(), { corsOrigins: ["https://app.example"] });
      try {
        const preflight = (origin: string) =>
          fetch(`http://127.0.0.1:${other.webPort}/${ECHO}/Say`, {
            method: "OPTIONS",
            headers: { Origin: origin, "Access-Control-Request-Method": "POST" },
          });
        assert.equal((await preflight("https://app.example")).headers.get("access-control-allow-origin"), "https://app.example");
        assert.equal((await preflight("https://evil.example")).headers.get("access-control-allow-origin"), null);
      } finally {
        await other.host.stop();
      }
    });
  });
});

describe("platform host shutdown", function () {
  this.timeout(30_000);

  for (const side of ["gRPC port (grpc-js client)", "web port (Connect gRPC transport)"] as const) {
    it(`drains on stop(): in-flight unary completes, open streams end, new calls are refused (${side})`, async () => {
      const probe = new Probe();
      const { host, port, webPort } = await startHost(probe, { shutdownGraceMs: 5000 });
      const caller =
        side == "gRPC port (grpc-js client)"
          ? grpcJsCaller(port)
          : connectCaller(createGrpcTransport({ baseUrl: `http://127.0.0.1:${webPort}` }));
      const fresh = () =>
        side == "gRPC port (grpc-js client)"
          ? grpcJsCaller(port)
          : connectCaller(createGrpcTransport({ baseUrl: `http://127.0.0.1:${webPort}` }));
      try {
        let firstMessage!: () => void;
        const streaming = new Promise<void>((resolve) => (firstMessage = resolve));
        const streamEnded = once(probe, "count-ended");
        const stream = caller.count({ count: 0, interval: durationFromMs(20) }, { onMessage: () => firstMessage() }).then(
          (got) => ({ ok: true as const, got }),
          (err: unknown) => ({ ok: false as const, code: ConnectError.from(err).code }),
        );
        await streaming;
        const unary = caller.say({ text: "in flight", delay: durationFromMs(400) });
        await until(() => host.tracker.unary == 1, 5000, "the unary call in flight");
        assert.equal(host.tracker.unary, 1);
        assert.equal(host.tracker.streams, 1);

        const started = Date.now();
        const stopped = host.stop();
        assert.equal(host.tracker.draining, true);

        const late = fresh();
        await expectCode(late.say({ text: "too late" }), Code.Unavailable);
        late.close();

        assert.equal((await unary).text, "in flight", "the in-flight unary call completes");
        const end = await stream;
        // The handler saw its signal abort and ended the stream (cleanly, or UNAVAILABLE).
        const [handlerEnd] = (await streamEnded) as [{ aborted: boolean }];
        assert.equal(handlerEnd.aborted, true);
        if (!end.ok) assert.equal(Code[end.code], Code[Code.Unavailable]);
        await stopped;
        assert.ok(Date.now() - started < 3000, "drained well before the grace period");
        assert.equal(host.tracker.inFlight, 0);
      } finally {
        caller.close();
        await host.stop();
      }
    });
  }

  it("marks health NOT_SERVING for Watch callers when draining starts", async () => {
    const probe = new Probe();
    const { host, port } = await startHost(probe);
    const HealthClient = grpc.makeGenericClientConstructor(healthDefinition as unknown as grpc.ServiceDefinition, "Health");
    const health = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, Function>;
    const call = health["Watch"]!({ service: "" }) as grpc.ClientReadableStream<{ status: string }>;
    const seen: string[] = [];
    call.on("error", () => {});
    const notServing = new Promise<void>((resolve) =>
      call.on("data", (m: { status: string }) => {
        seen.push(m.status);
        if (m.status == "NOT_SERVING") resolve();
      }),
    );
    await until(() => seen.length > 0, 5000, "the first Watch status");
    const stopped = host.stop();
    await notServing;
    await stopped;
    health.close();
    assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
  });

  it("forces open calls closed after shutdownGraceMs", async () => {
    const probe = new Probe();
    const { host, port } = await startHost(probe, { shutdownGraceMs: 300 });
    const caller = grpcJsCaller(port);
    // A unary call that ignores nothing but takes longer than the grace period.
    const slow = caller.say({ text: "slow", delay: durationFromMs(3000) }).catch((e: unknown) => ConnectError.from(e));
    await until(() => host.tracker.unary == 1, 5000, "the slow call in flight");
    const started = Date.now();
    await host.stop();
    assert.ok(Date.now() - started < 1500, "stop() returns after the grace period");
    const res = await slow;
    assert.ok(res instanceof ConnectError, "the overdue call failed");
    caller.close();
  });
});
