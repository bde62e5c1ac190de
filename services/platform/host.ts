import * as http2 from "node:http2";
import { observeStream } from "./abort.js";
import * as http from "node:http";
import * as net from "node:net";
import * as grpc from "@grpc/grpc-js";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, cors, type Interceptor, type StreamRequest, type StreamResponse } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Config } from "./config.js";
import { toConnectError } from "./errors.js";
import { grpcServerOptions, mountService } from "./grpc-adapter.js";
import { HealthService, healthFileDescriptorProtos } from "./health.js";
import type { Logger } from "./logger.js";
import { addReflection } from "./reflection.js";
import type { ServiceModule } from "./service.js";

/**
 * Counts in-flight calls (unary) and streams on both listeners and owns the signal that
 * tells streaming handlers to finish when the host drains.
 */
export class CallTracker {
  #unary = 0;
  #streams = 0;
  readonly #drain = new AbortController();
  #idle: Array<() => void> = [];

  get unary(): number {
    return this.#unary;
  }
  get streams(): number {
    return this.#streams;
  }
  get inFlight(): number {
    return this.#unary + this.#streams;
  }
  /** True once stop() began: new calls are refused with UNAVAILABLE. */
  get draining(): boolean {
    return this.#drain.signal.aborted;
  }
  /** Aborts when the host starts draining; combined into every streaming handler's signal. */
  get shutdownSignal(): AbortSignal {
    return this.#drain.signal;
  }

  /** Records the start of a call; the returned function (idempotent) records its end. */
  begin(kind: "unary" | "stream"): () => void {
    if (kind == "unary") this.#unary++;
    else this.#streams++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (kind == "unary") this.#unary--;
      else this.#streams--;
      if (this.inFlight == 0) for (const resolve of this.#idle.splice(0)) resolve();
    };
  }

  startDrain(): void {
    if (!this.draining) this.#drain.abort(new ConnectError("server is shutting down", Code.Unavailable));
  }

  /** Resolves when no call is in flight. */
  idle(): Promise<void> {
    if (this.inFlight == 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }
}

export interface HostOptions {
  config: Config;
  logger: Logger;
  modules: ServiceModule[];
  /** Interceptors run on both listeners, first = outermost (e.g. logging, then auth). */
  interceptors: Interceptor[];
}

export interface Host {
  /** Binds both listeners; ports are the actual ones (config 0 = ephemeral). */
  start(): Promise<{ port: number; webPort: number }>;
  /** Graceful drain (see createHost), then closes both listeners. */
  stop(): Promise<void>;
  readonly tracker: CallTracker;
  readonly health: HealthService;
}

/** Headers browsers may send besides the protocol ones. */
const CORS_ALLOWED_HEADERS = [...cors.allowedHeaders, "Authorization", "X-Request-Id", "Idempotency-Key"];
const CORS_EXPOSED_HEADERS = [...cors.exposedHeaders, "X-Request-Id"];

/**
 * Hosts the modules' Connect implementations on two listeners: grpc-js on config.port (with
 * health and reflection) and connect-node (Connect, gRPC-web, gRPC; HTTP/1.1 and h2c; CORS) on
 * config.webPort. stop() marks health NOT_SERVING, refuses new calls, aborts the signals of
 * open streams so their handlers end them, waits for in-flight calls, and forces the rest
 * closed after config.shutdownGraceMs.
 */
export function createHost(opts: HostOptions): Host {
  const { config, logger, modules } = opts;
  const tracker = new CallTracker();
  const health = new HealthService(modules.map((m) => m.desc.typeName));
  // Outermost: map errors and refuse calls while draining. Handler errors are already mapped
  // inside each service (errors.ts withMappedErrors), so the user interceptors (logging) see the
  // code the client will see without a second mapping layer around every streamed message.
  const interceptors = [errorInterceptor(logger), drainInterceptor(tracker), ...opts.interceptors];

  let grpcServer: grpc.Server | undefined;
  let webServer: net.Server | undefined;
  let h2Server: http2.Http2Server | undefined;
  let h1Server: http.Server | undefined;
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<net.Socket>();
  let stopping: Promise<void> | undefined;

  async function start(): Promise<{ port: number; webPort: number }> {
    if (grpcServer) throw new Error("host already started");
    grpcServer = new grpc.Server(grpcServerOptions(config.maxMessageBytes));
    for (const m of modules) {
      mountService(grpcServer, m.desc, m.impl, {
        interceptors,
        logger: logger.child({ service: m.name }),
        maxMessageBytes: config.maxMessageBytes,
        tracker,
      });
    }
    health.addToServer(grpcServer);
    addReflection(grpcServer, modules.map((m) => m.desc), healthFileDescriptorProtos());
    const server = grpcServer;
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${hostForUrl(config.host)}:${config.port}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );

    const handler = webHandler(config, modules, interceptors, tracker);
    h2Server = http2.createServer({}, handler);
    h1Server = http.createServer(handler as unknown as http.RequestListener);
    h2Server.on("session", (s: http2.ServerHttp2Session) => {
      sessions.add(s);
      s.once("close", () => sessions.delete(s));
    });
    webServer = net.createServer((socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      routeConnection(socket, h2Server!, h1Server!);
    });
    const web = webServer;
    const webPort = await new Promise<number>((resolve, reject) => {
      web.once("error", reject);
      web.listen(config.webPort, config.host, () => {
        web.off("error", reject);
        const addr = web.address();
        resolve(typeof addr == "object" && addr ? addr.port : config.webPort);
      });
    });

    health.setServing("", true);
    for (const m of modules) health.setServing(m.desc.typeName, true);
    logger.info({ port, webPort, services: modules.map((m) => m.desc.typeName) }, "listening");
    return { port, webPort };
  }

  async function drainAndClose(): Promise<void> {
    health.shutdown();
    tracker.startDrain();
    logger.info({ unary: tracker.unary, streams: tracker.streams }, "draining");
    const server = grpcServer;
    const web = webServer;
    // Stop accepting: grpc-js and the http2 sessions send GOAWAY, in-flight calls continue.
    const grpcClosed = new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
    const webClosed = new Promise<void>((resolve) => (web ? web.close(() => resolve()) : resolve()));
    for (const s of sessions) s.close();
    h1Server?.closeIdleConnections();

    const deadline = Date.now() + config.shutdownGraceMs;
    const until = <T>(p: Promise<T>) => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        p.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now())))),
      ]).finally(() => clearTimeout(timer));
    };
    if (!(await until(tracker.idle()))) {
      logger.warn({ unary: tracker.unary, streams: tracker.streams }, "grace period over, closing calls");
    }
    // Our calls are done: end what never ends by itself (health watches, idle keep-alive
    // connections), then let the listeners finish closing so last statuses are flushed.
    health.closeWatches();
    h1Server?.closeIdleConnections();
    await until(Promise.all([grpcClosed, webClosed]));

    server?.forceShutdown();
    for (const s of sessions) s.destroy();
    for (const s of sockets) s.destroy();
    await webClosed;
    logger.info("stopped");
  }

  return {
    start,
    stop() {
      stopping ??= drainAndClose();
      return stopping;
    },
    tracker,
    health,
  };
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * Serves HTTP/2 with prior knowledge (h2c) and HTTP/1.1 on one port by looking at the first
 * bytes of a connection. Node 20's http2.createServer ignores allowHTTP1 without TLS (it only
 * applies to ALPN), so cleartext HTTP/1.1 clients would be refused otherwise.
 */
function routeConnection(socket: net.Socket, h2: http2.Http2Server, h1: http.Server): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const n = Math.min(head.length, H2_PREFACE.length);
    const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    // "PRI " decides; a shorter head that still matches waits for more bytes.
    if (isH2 && head.length < 4) return;
    socket.off("data", onData);
    socket.pause();
    socket.unshift(head);
    if (isH2) {
      // The http2 session takes the socket's buffered bytes itself; resuming would lose them.
      h2.emit("connection", socket);
    } else {
      h1.emit("connection", socket);
      socket.resume();
    }
  };
  socket.on("data", onData);
  socket.on("error", () => socket.destroy());
}

function hostForUrl(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** connect-node handler plus CORS and call tracking. */
function webHandler(
  config: Config,
  modules: ServiceModule[],
  interceptors: Interceptor[],
  tracker: CallTracker,
): (req: http2.Http2ServerRequest | http.IncomingMessage, res: http2.Http2ServerResponse | http.ServerResponse) => void {
  const kinds = new Map<string, "unary" | "stream">();
  for (const m of modules) {
    for (const method of m.desc.methods) {
      kinds.set(`/${m.desc.typeName}/${method.name}`, method.methodKind == "unary" ? "unary" : "stream");
    }
  }
  const connect = connectNodeAdapter({
    routes: (router) => {
      for (const m of modules) router.service(m.desc as DescService, m.impl);
    },
    interceptors,
    readMaxBytes: config.maxMessageBytes,
    grpc: true,
    grpcWeb: true,
    connect: true,
  });
  const anyOrigin = config.corsOrigins.includes("*");
  const origins = new Set(config.corsOrigins);

  return (req, res) => {
    const origin = req.headers.origin;
    if (typeof origin == "string" && (anyOrigin || origins.has(origin))) {
      res.setHeader("Access-Control-Allow-Origin", anyOrigin ? "*" : origin);
      if (!anyOrigin) res.setHeader("Vary", "Origin");
      if (req.method == "OPTIONS" && req.headers["access-control-request-method"] !== undefined) {
        res.setHeader("Access-Control-Allow-Methods", cors.allowedMethods.join(", "));
        res.setHeader("Access-Control-Allow-Headers", CORS_ALLOWED_HEADERS.join(", "));
        res.setHeader("Access-Control-Max-Age", "7200");
        res.writeHead(204);
        res.end();
        return;
      }
      res.setHeader("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS.join(", "));
    } else if (req.method == "OPTIONS") {
      res.writeHead(204);
      res.end();
      return;
    }
    const kind = kinds.get((req.url ?? "").split("?", 1)[0] ?? "");
    if (kind) {
      const done = tracker.begin(kind);
      res.once("close", done);
      res.once("finish", done);
    }
    connect(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse);
  };
}

/** Maps anything thrown to a ConnectError (errors.ts): INTERNAL causes are logged, never sent. */
export function errorInterceptor(logger: Logger): Interceptor {
  const map = (err: unknown, rpc: string): ConnectError => {
    const { error, internal } = toConnectError(err);
    if (internal !== undefined) logger.error({ err: internal, rpc }, "internal error in handler");
    return error;
  };
  return (next) => async (req) => {
    const rpc = `${req.service.typeName}/${req.method.name}`;
    let res;
    try {
      res = await next(req);
    } catch (err) {
      throw map(err, rpc);
    }
    if (!res.stream) return res;
    return { ...res, message: observeStream(res.message, { error: (err) => map(err, rpc) }) } as StreamResponse;
  };
}

/**
 * Refuses new calls while draining, and gives streaming handlers a signal (and request
 * iterable) that also abort when the host starts draining, so open streams end.
 */
export function drainInterceptor(tracker: CallTracker): Interceptor {
  return (next) => async (req) => {
    if (tracker.draining) throw new ConnectError("server is shutting down", Code.Unavailable);
    if (!req.stream) return next(req);
    const signal = AbortSignal.any([req.signal, tracker.shutdownSignal]);
    return next({ ...req, signal, message: abortable(req.message, signal) } as StreamRequest);
  };
}

/**
 * The request stream of a call, rejecting the pending read when signal aborts. One abort
 * listener per stream, not per message: client streams carry thousands of messages.
 */
function abortable<T>(iterable: AsyncIterable<T>, signal: AbortSignal): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator]() {
      const it = iterable[Symbol.asyncIterator]();
      let pending: ((err: unknown) => void) | undefined;
      const onAbort = () => {
        const reject = pending;
        pending = undefined;
        reject?.(ConnectError.from(signal.reason));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const release = () => signal.removeEventListener("abort", onAbort);
      return {
        next() {
          if (signal.aborted) {
            release();
            return Promise.reject(ConnectError.from(signal.reason));
          }
          return new Promise<IteratorResult<T>>((resolve, reject) => {
            pending = reject;
            it.next().then(
              (r) => {
                pending = undefined;
                if (r.done) release();
                resolve(r);
              },
              (e: unknown) => {
                pending = undefined;
                release();
                reject(e);
              },
            );
          });
        },
        async return() {
          release();
          // Do not await: the underlying read may be blocked on a peer that sends nothing.
          void it.return?.()?.catch(() => {});
          return { value: undefined, done: true };
        },
      };
    },
  };
}
