import { randomUUID } from "node:crypto";
import { Code, ConnectError, createContextKey, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { observeStream } from "./abort.js";
import { toConnectError } from "./errors.js";
import { createLogger, type Logger } from "./logger.js";

/** The request id of the current call (from x-request-id, or generated). */
export const requestIdKey = createContextKey<string>("", { description: "request id" });
/** A child logger carrying the request id and RPC name; silent outside an intercepted call. */
export const loggerKey = createContextKey<Logger>(createLogger("silent"), { description: "request logger" });

export const REQUEST_ID_HEADER = "x-request-id";

/** Client-supplied ids are kept only when short and printable, so they are safe to log and echo. */
const VALID_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** "DeadlineExceeded" -> "DEADLINE_EXCEEDED", the canonical gRPC spelling. */
export function codeName(code: Code | 0): string {
  if (code === 0) return "OK";
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * Assigns a request id, stores it and a child logger in the context values, echoes
 * x-request-id in the response header and logs one line per finished call (streams at end).
 */
export function loggingInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const supplied = req.header.get(REQUEST_ID_HEADER);
    const requestId = supplied !== null && VALID_REQUEST_ID.test(supplied) ? supplied : randomUUID();
    const service = req.service.typeName;
    const method = req.method.name;
    const log = logger.child({ requestId, rpc: `${service}/${method}` });
    req.contextValues.set(requestIdKey, requestId);
    req.contextValues.set(loggerKey, log);
    const started = performance.now();
    let logged = false;
    const finish = (code: Code | 0) => {
      if (logged) return;
      logged = true;
      const ms = Math.round((performance.now() - started) * 10) / 10;
      log.info({ service, method, code: codeName(code), ms, requestId }, "rpc finished");
    };
    const failed = (err: unknown): Code => {
      // Error metadata is sent as headers/trailers on both ports, so the id reaches failed calls too.
      if (err instanceof ConnectError) err.metadata.set(REQUEST_ID_HEADER, requestId);
      return toConnectError(err).error.code;
    };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      finish(failed(err));
      throw err;
    }
    res.header.set(REQUEST_ID_HEADER, requestId);
    if (!res.stream) {
      finish(0);
      return res;
    }
    const message = observeStream(res.message, {
      error: (err) => {
        finish(failed(err));
        return err;
      },
      // Stopped early without an error: the client went away or the deadline passed.
      end: (completed) => finish(completed ? 0 : req.signal.aborted ? ConnectError.from(req.signal.reason).code : Code.Canceled),
    });
    return { ...res, message } as StreamResponse;
  };
}
