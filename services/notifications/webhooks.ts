import { fetch } from "undici";
import type { NotificationsConfig } from "../platform/config.js";
import type { JobQueue, RunningJob } from "../platform/jobs.js";
import type { Logger } from "../platform/logger.js";
import { afterFailure, backoffMs, isSuccess } from "./domain.js";
import { refusedTarget, webhookDispatcher } from "./egress.js";
import { openSecret } from "./secrets.js";
import { ATTEMPT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, signatureHeader } from "./signature.js";
import type { DeliveryWork, NotificationsStore } from "./store.js";

/** pg-boss queue of webhook delivery attempts. */
export const WEBHOOK_QUEUE = "webhooks";

/** One attempt of one delivery: attempt n runs only while the delivery has made n - 1 (a duplicate or stale job does nothing). */
export interface WebhookJob {
  deliveryId: string;
  attempt: number;
}

/** The result of one HTTP attempt. */
export interface AttemptResult {
  statusCode: number | null;
  error: string | null;
  durationMs: number;
}

export interface WebhookWorkerOptions {
  store: NotificationsStore;
  queue: JobQueue<WebhookJob>;
  config: NotificationsConfig;
  logger: Logger;
  /** Random source in [0, 1) for the backoff jitter (tests pin it). */
  rand?: () => number;
  /** Clock in ms (signature timestamps). */
  now?: () => number;
}

const USER_AGENT = "dabba-webhooks/1";
/** Most characters of an error kept in the delivery log. */
const ERROR_MAX = 300;

/**
 * Webhook delivery: each job is one attempt. The attempt claims the delivery (so a duplicate job
 * cannot POST at the same time), POSTs the stored body signed with the current timestamp, and
 * records the attempt (delivery log row) and its outcome in one transaction with the next
 * attempt's job: 2xx delivers; a non-2xx, network error or timeout retries after a full-jitter
 * exponential delay, or dead-letters the delivery after the configured attempts. A crash
 * between the POST and the record repeats the attempt (at least once; receivers dedupe by
 * dabba-event-id).
 */
export function createWebhookWorker(opts: WebhookWorkerOptions) {
  const { store, queue, config: c } = opts;
  const logger = opts.logger.child({ component: "webhooks" });
  const rand = opts.rand ?? Math.random;
  const now = opts.now ?? Date.now;
  // Connections only to public addresses unless WEBHOOK_ALLOW_PRIVATE_NETWORKS (egress.ts).
  const dispatcher = webhookDispatcher(c.allowPrivateNetworks);

  async function post(w: DeliveryWork, attempt: number): Promise<AttemptResult> {
    const t0 = performance.now();
    const t = Math.floor(now() / 1000);
    const refused = refusedTarget(w.url, c.allowPrivateNetworks);
    if (refused) return { statusCode: null, error: `refused: ${refused}`, durationMs: 0 };
    try {
      const res = await fetch(w.url, {
        dispatcher,
        method: "POST",
        body: w.body,
        redirect: "manual",
        signal: AbortSignal.timeout(c.webhookTimeoutMs),
        headers: {
          "content-type": "application/json",
          "user-agent": USER_AGENT,
          [SIGNATURE_HEADER]: signatureHeader(openSecret(w.secret, c.secretKey, c.previousSecretKeys), t, w.body),
          [EVENT_ID_HEADER]: w.eventId,
          [ATTEMPT_HEADER]: String(attempt),
        },
      });
      // The answer's body is not used; drain it so the connection is freed.
      await res.body?.cancel().catch(() => {});
      return { statusCode: res.status, error: null, durationMs: performance.now() - t0 };
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const msg =
        e.name === "TimeoutError" || e.name === "AbortError"
          ? `timeout after ${c.webhookTimeoutMs} ms`
          : e.cause?.code === "EGRESS_REFUSED"
            ? `refused: ${e.cause.message}`
            : [e.message, e.cause?.code ?? e.cause?.message].filter(Boolean).join(": ");
      return { statusCode: null, error: msg.slice(0, ERROR_MAX), durationMs: performance.now() - t0 };
    }
  }

  /** Runs one attempt job (the queue's per-job handler). Throws only to have the job retried later (delivery busy, store failure). */
  async function run({ job }: RunningJob<WebhookJob>): Promise<void> {
    const claim = await store.claim(job.deliveryId, job.attempt, c.webhookTimeoutMs + 5_000);
    if (!claim.claimed) {
      if (claim.reason === "busy") throw new Error(`delivery ${job.deliveryId} attempt ${job.attempt} is in flight elsewhere`);
      return;
    }
    const w = claim.work;
    const result = await post(w, job.attempt);
    const ok = result.statusCode !== null && isSuccess(result.statusCode);
    if (!ok && result.statusCode !== null) result.error = `HTTP ${result.statusCode}`;
    const inRound = job.attempt - w.roundStart;
    const fate = ok ? "delivered" : afterFailure(inRound, c.webhookMaxAttempts);
    const delay = fate === "retry" ? backoffMs(inRound, c.webhookBackoffBaseMs, c.webhookBackoffCapMs, rand()) : 0;
    const nextAtMs = Date.now() + delay;
    let wakeAfter = false;
    await store.transaction(async (trx) => {
      const recorded = await store.recordAttempt(
        trx,
        w,
        job.attempt,
        result,
        fate === "retry" ? { status: "pending", nextAt: new Date(nextAtMs) } : { status: fate },
      );
      if (recorded && fate === "retry") {
        await queue.send([{ job: { deliveryId: w.id, attempt: job.attempt + 1 }, dueAtMs: nextAtMs }], trx);
        wakeAfter = queue.sentDueIn(trx);
      }
    });
    if (wakeAfter) queue.wake();
    const log = { deliveryId: w.id, webhookId: w.webhookId, eventId: w.eventId, attempt: job.attempt, statusCode: result.statusCode, error: result.error, ms: Math.round(result.durationMs) };
    if (fate === "delivered") logger.debug(log, "webhook delivered");
    else if (fate === "retry") logger.info({ ...log, retryInMs: delay }, "webhook attempt failed; retrying");
    else logger.warn(log, "webhook dead-lettered");
  }

  return { run, post, close: () => dispatcher.close() };
}

export type WebhookWorker = ReturnType<typeof createWebhookWorker>;
