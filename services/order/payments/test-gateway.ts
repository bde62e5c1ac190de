import { randomBytes } from "node:crypto";
import { sql, type Kysely, type Transaction } from "kysely";
import type { Db } from "../../platform/db.js";
import {
  GatewayError,
  GatewayTimeout,
  type AuthorizeRequest,
  type FollowUpRequest,
  type GatewayOperation,
  type GatewayResult,
  type PaymentGateway,
} from "./gateway.js";

/**
 * The built-in test gateway: the default adapter of the payment port. It behaves like a card
 * gateway (authorizations, one capture per authorization that releases the rest, voids, partial
 * refunds, idempotency keys) and keeps its state in its own tables (test_gateway_operations,
 * test_gateway_faults) on the order database, a stand-in for the external gateway's database:
 * every dabba process on one Postgres sees the same payments, and in embedded mode they live in
 * PGlite.
 *
 * Test tokens (PlaceOrderRequest.payment_token), acting on authorize:
 */
export const TEST_TOKENS = Object.freeze({
  /** Approved. */
  tok_approve: "approve",
  tok_visa: "approve",
  tok_mastercard: "approve",
  /** Declined: "card declined". */
  tok_decline: "decline",
  /** Declined: "insufficient funds". */
  tok_insufficient_funds: "insufficient_funds",
  /** Declined: "card expired". */
  tok_expired: "expired",
  /** The gateway authorizes, but its answer comes too late (a timeout): the truth is approved. */
  tok_timeout: "timeout",
  /** The gateway fails (5xx) on every authorize: nothing happens. */
  tok_error: "error",
} as const);
export type TestToken = keyof typeof TEST_TOKENS;

interface OperationRow {
  key: string;
  operation: GatewayOperation;
  authorization_key: string;
  token: string;
  amount_minor: string | number;
  currency: string;
  outcome: "approved" | "declined";
  reason: string;
  reference: string;
}

export interface TestGatewayOptions {
  db: Db;
  /** Simulated latency of each call, ms. */
  latencyMs: number;
}

export interface TestGateway extends PaymentGateway {
  /** Calls that reached this gateway object (per process; the breaker test counts them). */
  calls(): number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function createTestGateway(opts: TestGatewayOptions): TestGateway {
  const db = opts.db.kysely as Kysely<any>;
  let calls = 0;

  /** Consumes one injected fault for the operation, if any applies to this call. */
  async function fault(op: GatewayOperation): Promise<FaultKind | undefined> {
    const r = await sql<{ kind: FaultKind; rate: number; remaining: string | null }>`
      select kind, rate, remaining from test_gateway_faults where operation = ${op}`.execute(db);
    const f = r.rows[0];
    if (!f) return undefined;
    if (f.remaining !== null) {
      const taken = await sql<{ kind: FaultKind }>`
        update test_gateway_faults set remaining = remaining - 1 where operation = ${op} and remaining > 0 returning kind`.execute(db);
      return taken.rows[0]?.kind;
    }
    return Math.random() < Number(f.rate) ? f.kind : undefined;
  }

  async function begin(op: GatewayOperation): Promise<Exclude<FaultKind, "error"> | undefined> {
    calls++;
    if (opts.latencyMs > 0) await sleep(opts.latencyMs);
    const f = await fault(op);
    if (f === "error") throw new GatewayError(`test gateway: injected ${op} error`);
    return f;
  }

  function result(row: OperationRow): GatewayResult {
    return row.outcome === "approved"
      ? { outcome: "approved", amountMinor: Number(row.amount_minor), reference: row.reference }
      : { outcome: "declined", reason: row.reason };
  }

  async function stored(trx: Kysely<any>, key: string): Promise<OperationRow | undefined> {
    const r = await sql<OperationRow>`select * from test_gateway_operations where key = ${key}`.execute(trx);
    return r.rows[0];
  }

  /**
   * Stores the first result of a key and returns the key's stored result, in one statement; a
   * concurrent first call of the same key loses and reads the winner's. `inserted` says whether
   * this call's result is the stored one.
   */
  async function store(trx: Kysely<any>, row: Omit<OperationRow, "reference">): Promise<{ row: OperationRow; inserted: boolean }> {
    const reference = `gw_${randomBytes(8).toString("hex")}`;
    const r = await sql<OperationRow & { inserted: boolean }>`
      with ins as (
        insert into test_gateway_operations (key, operation, authorization_key, token, amount_minor, currency, outcome, reason, reference)
        values (${row.key}, ${row.operation}, ${row.authorization_key}, ${row.token}, ${row.amount_minor}, ${row.currency}, ${row.outcome}, ${row.reason}, ${reference})
        on conflict (key) do nothing
        returning *)
      select *, true as inserted from ins
      union all
      select *, false as inserted from test_gateway_operations where key = ${row.key} and not exists (select 1 from ins)`.execute(trx);
    const got = r.rows[0];
    if (got) {
      const { inserted, ...op } = got;
      return { row: op, inserted };
    }
    // The conflicting row was committed after this statement's snapshot was taken: read it now.
    return { row: (await stored(trx, row.key))!, inserted: false };
  }

  async function authorize(req: AuthorizeRequest): Promise<GatewayResult> {
    const injected = await begin("authorize");
    const behaviour = (TEST_TOKENS as Record<string, string>)[req.token];
    if (behaviour === "error") throw new GatewayError("test gateway: 503 service unavailable (tok_error)");
    const { row, inserted } = await store(db, {
      key: req.key,
      operation: "authorize",
      authorization_key: "",
      token: req.token,
      amount_minor: req.amountMinor,
      currency: req.currency,
      ...(injected === "decline" ? authorizeOutcome("decline", req.amountMinor) : authorizeOutcome(behaviour, req.amountMinor)),
    });
    // A timeout token: the first answer is lost (the gateway did authorize); a retry gets it.
    if (injected === "timeout" || (behaviour === "timeout" && inserted)) throw new GatewayTimeout("test gateway: no answer in time");
    return result(row);
  }

  function followUp(op: Exclude<GatewayOperation, "authorize">) {
    return async (req: FollowUpRequest): Promise<GatewayResult> => {
      const injected = await begin(op);
      const row = await db.transaction().execute(async (trx: Transaction<any>) => {
        // Operations on one authorization serialize on its row; a repeated key then finds its first result.
        const auth = (
          await sql<OperationRow>`select * from test_gateway_operations where key = ${req.authorizationKey} and operation = 'authorize' for update`.execute(trx)
        ).rows[0];
        const prior = await stored(trx, req.key);
        if (prior) return prior;
        const base = { key: req.key, operation: op, authorization_key: req.authorizationKey, token: "", currency: req.currency };
        if (!auth || auth.outcome !== "approved") {
          return (await store(trx, { ...base, amount_minor: req.amountMinor, outcome: "declined", reason: "no such authorization" })).row;
        }
        const s = (
          await sql<{ captured: string; refunded: string; voided: string; captures: string }>`
            select coalesce(sum(amount_minor) filter (where operation = 'capture'), 0) as captured,
                   coalesce(sum(amount_minor) filter (where operation = 'refund'), 0) as refunded,
                   count(*) filter (where operation = 'void') as voided,
                   count(*) filter (where operation = 'capture') as captures
            from test_gateway_operations where authorization_key = ${req.authorizationKey} and outcome = 'approved'`.execute(trx)
        ).rows[0]!;
        const authorized = Number(auth.amount_minor);
        const captured = Number(s.captured);
        const refunded = Number(s.refunded);
        const voided = Number(s.voided) > 0;
        const wasCaptured = Number(s.captures) > 0;
        const decline = async (reason: string) => (await store(trx, { ...base, amount_minor: req.amountMinor, outcome: "declined", reason })).row;
        const approve = async (amount: number) => (await store(trx, { ...base, amount_minor: amount, outcome: "approved", reason: "" })).row;
        if (auth.currency !== req.currency) return decline("currency does not match the authorization");
        switch (op) {
          case "capture":
            if (voided) return decline("authorization was voided");
            if (wasCaptured) return decline("authorization was already captured");
            if (req.amountMinor <= 0) return decline("invalid amount");
            if (req.amountMinor > authorized) return decline("amount exceeds the authorization");
            return approve(req.amountMinor);
          case "void":
            if (voided) return decline("authorization was already voided");
            if (wasCaptured) return decline("authorization was already captured");
            return approve(authorized);
          case "refund":
            if (req.amountMinor <= 0) return decline("invalid amount");
            if (req.amountMinor > captured - refunded) return decline("amount exceeds what was captured and not refunded");
            return approve(req.amountMinor);
        }
      });
      if (injected === "timeout") throw new GatewayTimeout("test gateway: no answer in time");
      return result(row);
    };
  }

  return {
    authorize,
    capture: followUp("capture"),
    void: followUp("void"),
    refund: followUp("refund"),
    calls: () => calls,
  };
}

function authorizeOutcome(behaviour: string | undefined, amountMinor: number): { outcome: "approved" | "declined"; reason: string } {
  if (!Number.isInteger(amountMinor) || amountMinor <= 0) return { outcome: "declined", reason: "invalid amount" };
  switch (behaviour) {
    case "approve":
    case "timeout":
      return { outcome: "approved", reason: "" };
    case "decline":
      return { outcome: "declined", reason: "card declined" };
    case "insufficient_funds":
      return { outcome: "declined", reason: "insufficient funds" };
    case "expired":
      return { outcome: "declined", reason: "card expired" };
    default:
      return { outcome: "declined", reason: "unknown payment token" };
  }
}

// ---------------------------------------------------------------------------------------------
// Test controls (tests and the race run use these; the gateway's state is in the database, so
// they reach every process on it).

/** What an injected fault does: `error` (5xx, nothing happens), `timeout` (it happens, the answer is lost), `decline` (authorize only: the card refuses). */
export type FaultKind = "error" | "timeout" | "decline";

/**
 * Makes the test gateway fail an operation with a fault (see FaultKind) for the next `count`
 * calls or for a `rate` (0..1) of them.
 */
export async function injectGatewayFault(
  db: Db,
  op: GatewayOperation,
  f: { kind: FaultKind; count?: number; rate?: number },
): Promise<void> {
  if (f.kind === "decline" && op !== "authorize") throw new Error("the test gateway injects declines on authorize only");
  const remaining = f.count ?? null;
  const rate = f.rate ?? 1;
  await sql`insert into test_gateway_faults (operation, kind, remaining, rate) values (${op}, ${f.kind}, ${remaining}, ${rate})
    on conflict (operation) do update set kind = excluded.kind, remaining = excluded.remaining, rate = excluded.rate`.execute(db.kysely);
}

/** Removes every injected fault (the gateway recovers). */
export async function clearGatewayFaults(db: Db): Promise<void> {
  await sql`delete from test_gateway_faults`.execute(db.kysely);
}

/** The gateway's own records of approved operations (for reconciling with the ledger). */
export async function gatewayApprovedOperations(
  db: Db,
): Promise<{ key: string; operation: GatewayOperation; authorizationKey: string; amountMinor: number }[]> {
  const r = await sql<OperationRow>`select * from test_gateway_operations where outcome = 'approved' order by at, key`.execute(db.kysely);
  return r.rows.map((o) => ({ key: o.key, operation: o.operation, authorizationKey: o.authorization_key, amountMinor: Number(o.amount_minor) }));
}
