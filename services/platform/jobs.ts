import PgBoss from "pg-boss";
import { CompiledQuery, type Kysely } from "kysely";
import type { Db } from "./db.js";
import type { Logger } from "./logger.js";

/**
 * Durable jobs and timers on pg-boss (Postgres, FOR UPDATE SKIP LOCKED), one named queue per
 * user (dispatch: rounds, offer expiry, pickup deadlines; order: payment settlement, the
 * payment reconciler, restaurant answer timers; notifications: webhook deliveries). A job runs
 * under a lease (pg-boss's expiry): a worker that dies mid-job leaves it active until the lease
 * passes, then pg-boss retries it elsewhere. Handlers must be idempotent: a job may run more
 * than once.
 */
export interface JobQueueOptions {
  db: Db;
  logger: Logger;
  /** The pg-boss queue name (one per service and purpose). */
  queue: string;
  /** Jobs running at once in this process. */
  concurrency: number;
  /** A job not completed within this lease is retried (by any process). */
  leaseMs: number;
  /** How often pg-boss looks for expired leases. */
  leaseCheckMs: number;
  /** Delay before a failed job is retried (seconds); pg-boss backs off exponentially when backoff is set. */
  retryDelayS?: number;
  retryBackoff?: boolean;
  retryLimit?: number;
}

export interface NewJob<J> {
  job: J;
  /** Due time (ms epoch); now when unset. */
  dueAtMs?: number;
  /** Higher runs first among due jobs (default 0): orderPriority(confirmedAt) serves older orders first. */
  priority?: number;
}

export interface RunningJob<J> {
  job: J;
  /** How long the job waited past its due time when fetched (overload signal). */
  lateMs: number;
  /** Times it was tried before (a retry after a crash or failure is > 0). */
  retries: number;
}

export interface JobQueue<J> {
  /**
   * Creates the schema and queue, then starts fetching with at most `concurrency` jobs running.
   * One fetch's jobs go to the handler together; they complete together, or fail (and are
   * retried after the delay) together when it throws.
   */
  start(handler: (jobs: RunningJob<J>[]) => Promise<void>): Promise<void>;
  /** Like start, but each job is handled, completed or failed (retried after its delay) on its own. */
  startEach(handler: (job: RunningJob<J>) => Promise<void>): Promise<void>;
  /**
   * Inserts jobs; inside `trx` they commit (or roll back) with the caller's state change, and the
   * caller wakes the queue after the commit when sentDueIn(trx) (a wake before the commit would
   * fetch nothing and then wait a poll interval).
   */
  send(jobs: NewJob<J>[], trx?: Kysely<any>): Promise<void>;
  /** Whether a job due now was sent inside this transaction. */
  sentDueIn(trx: Kysely<any>): boolean;
  /** Fetch now rather than at the next poll (a due job was just sent). */
  wake(): void;
  /** Stops fetching, waits for running jobs (up to graceMs), stops pg-boss. */
  stop(graceMs?: number): Promise<void>;
  /** Jobs running in this process now. */
  running(): number;
}

const POLL_MS = 250;
/** Base of priorities: seconds since this instant, subtracted, so an older order has a higher priority. */
const PRIORITY_EPOCH_MS = Date.UTC(2026, 0, 1);
const RETRY_LIMIT = 1000;
const RETRY_DELAY_S = 1;

/** A pg-boss priority from a time: an older time runs first among due jobs (oldest-first under a burst). */
export function orderPriority(confirmedAtMs: number): number {
  return -Math.floor((confirmedAtMs - PRIORITY_EPOCH_MS) / 1000);
}

function executor(k: Kysely<any>) {
  return { executeSql: async (text: string, values?: unknown[]) => ({ rows: (await k.executeQuery<any>(CompiledQuery.raw(text, values ?? []))).rows }) };
}

export function createJobQueue<J extends object>(opts: JobQueueOptions): JobQueue<J> {
  const QUEUE = opts.queue;
  const logger = opts.logger.child({ component: "jobs", queue: QUEUE });
  const leaseS = Math.max(1, Math.round(opts.leaseMs / 1000));
  const boss = new PgBoss({
    db: { executeSql: (text: string, values?: unknown[]) => opts.db.executeSql(text, values) },
    schema: "pgboss",
    supervise: true,
    maintenanceIntervalSeconds: Math.max(1, Math.round(opts.leaseCheckMs / 1000)),
    schedule: false,
    migrate: true,
  } as PgBoss.ConstructorOptions);
  boss.on("error", (err) => logger.error({ err }, "job queue error"));

  let handler: ((jobs: RunningJob<J>[]) => Promise<void>) | undefined;
  let each: ((job: RunningJob<J>) => Promise<void>) | undefined;
  let stopping = false;
  let loop: Promise<void> | undefined;
  let inflight = 0;
  let wakeUp: (() => void) | undefined;
  let woken = false;
  const done = new Set<Promise<void>>();
  const dueIn = new WeakSet<Kysely<any>>();
  const completed: string[] = [];
  let completing: Promise<void> | undefined;

  function wake(): void {
    woken = true;
    const w = wakeUp;
    wakeUp = undefined;
    w?.();
  }

  /** Waits up to ms for a wake; a wake that came while busy is consumed here (never a busy loop). */
  function idle(ms: number): Promise<void> {
    if (woken) {
      woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        wakeUp = undefined;
        resolve();
      }, ms);
      wakeUp = () => {
        clearTimeout(t);
        woken = false;
        resolve();
      };
    });
  }

  // Completions are flushed together: one statement for all jobs finished since the last flush.
  function complete(id: string): void {
    completed.push(id);
    if (completing) return;
    completing = (async () => {
      while (completed.length > 0) {
        const ids = completed.splice(0, completed.length);
        try {
          await boss.complete(QUEUE, ids);
        } catch (err) {
          // Left active: the lease passes and the job runs again (handlers are idempotent).
          logger.error({ err, jobs: ids.length }, "completing jobs failed");
        }
      }
      completing = undefined;
    })();
  }

  /** One fetch's jobs go to the handler together (a burst's rounds are matched jointly); completed or failed together. */
  async function runBatch(jobs: PgBoss.JobWithMetadata<J>[]): Promise<void> {
    const now = Date.now();
    const running = jobs.map((j) => ({
      job: j.data,
      lateMs: Math.max(0, now - (j.startAfter ? new Date(j.startAfter).getTime() : now)),
      retries: j.retryCount ?? 0,
    }));
    if (each) {
      await Promise.all(
        jobs.map(async (j, i) => {
          try {
            await each!(running[i]);
            complete(j.id);
          } catch (err) {
            logger.warn({ err, job: running[i].job, retries: running[i].retries }, "job failed; retried after its delay");
            await boss.fail(QUEUE, j.id).catch(() => {});
          }
        }),
      );
      return;
    }
    try {
      await handler!(running);
      for (const j of jobs) complete(j.id);
    } catch (err) {
      logger.error({ err, jobs: running.map((r) => r.job) }, "jobs failed; retried after their delay");
      await boss.fail(QUEUE, jobs.map((j) => j.id)).catch(() => {});
    }
  }

  async function run(): Promise<void> {
    while (!stopping) {
      const free = opts.concurrency - inflight;
      if (free <= 0) {
        await idle(POLL_MS);
        continue;
      }
      woken = false;
      let jobs: PgBoss.JobWithMetadata<J>[] = [];
      try {
        jobs = await boss.fetch<J>(QUEUE, { batchSize: free, includeMetadata: true, priority: true });
      } catch (err) {
        logger.error({ err }, "fetching jobs failed");
      }
      if (jobs.length > 0) {
        inflight += jobs.length;
        const n = jobs.length;
        const p: Promise<void> = runBatch(jobs).finally(() => {
          inflight -= n;
          done.delete(p);
          wake();
        });
        done.add(p);
      }
      // A full batch means more may be due: fetch again at once.
      if (jobs.length < free) await idle(POLL_MS);
    }
  }

  async function begin(): Promise<void> {
    await boss.start();
    await boss.createQueue(QUEUE, { name: QUEUE, policy: "standard" } as PgBoss.Queue);
    loop = run();
  }

  return {
    async start(h) {
      handler = h;
      await begin();
    },
    async startEach(h) {
      each = h;
      await begin();
    },
    async send(jobs, trx) {
      if (jobs.length === 0) return;
      const rows = jobs.map(({ job, dueAtMs, priority }) => ({
        name: QUEUE,
        data: job,
        priority: priority ?? 0,
        startAfter: dueAtMs !== undefined ? new Date(dueAtMs).toISOString() : undefined,
        expireInSeconds: leaseS,
        retryLimit: opts.retryLimit ?? RETRY_LIMIT,
        retryDelay: opts.retryDelayS ?? RETRY_DELAY_S,
        retryBackoff: opts.retryBackoff ?? false,
      }));
      await boss.insert(rows as unknown as PgBoss.JobInsert[], trx ? ({ db: executor(trx) } as any) : undefined);
      if (jobs.some((j) => j.dueAtMs === undefined || j.dueAtMs <= Date.now())) {
        if (trx) dueIn.add(trx);
        else wake();
      }
    },
    sentDueIn: (trx) => dueIn.has(trx),
    wake,
    async stop(graceMs = 5000) {
      stopping = true;
      wake();
      await loop;
      await Promise.race([Promise.allSettled([...done]), new Promise((r) => setTimeout(r, graceMs))]);
      await completing;
      await boss.stop({ graceful: false, wait: true, close: false } as PgBoss.StopOptions).catch(() => {});
    },
    running: () => inflight,
  };
}
