import { pino, type Logger as PinoLogger } from "pino";

/** Structured JSON logger (pino). One per process; children carry the service and request id. */
export type Logger = PinoLogger;

export function createLogger(level: string, base: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { app: "dabba", ...base }, timestamp: pino.stdTimeFunctions.isoTime });
}
