/**
 * The settlement rules, pure: from an order's money facts and its ledger, the next gateway
 * operation that brings the gateway to what the order's state says is due, or none.
 *
 * Idempotency keys are derived from the order and the ledger: `<authorization>:<op>:<n>`, where n
 * counts the operation's earlier ANSWERED calls (approved or declined) on that authorization, and
 * top-up authorizations are `<order>:auth:<n>`. A call that timed out or failed is not answered,
 * so its retry gets the same key and the gateway replays its first result: a retried job never
 * moves money twice, even when the previous worker died after the gateway moved the money and
 * before the ledger row was written.
 */
import type { GatewayOperation } from "./gateway.js";

export type Outcome = "approved" | "declined" | "timeout" | "error";

export interface LedgerFact {
  operation: GatewayOperation;
  amountMinor: number;
  outcome: Outcome;
  key: string;
  /** The authorization a capture, void or refund acted on; empty for an authorize. */
  parentKey: string;
  reason: string;
}

export interface OrderMoney {
  orderId: string;
  /** The order's status (domain Status). */
  status: string;
  /** What the customer owes in the order's current state. */
  dueMinor: number;
}

export type SettleAction =
  | { kind: "none" }
  /** PAYMENT_PENDING: the reconciler settles the placement's authorization first. */
  | { kind: "reconcile" }
  | { kind: "authorize"; key: string; amountMinor: number }
  | { kind: "capture"; key: string; authorizationKey: string; amountMinor: number }
  | { kind: "void"; key: string; authorizationKey: string }
  | { kind: "refund"; key: string; authorizationKey: string; amountMinor: number };

/** The reason the test gateway (and a real one) gives for a void of an authorization it never made. */
export const NO_SUCH_AUTHORIZATION = "no such authorization";

export interface AuthorizationView {
  key: string;
  /** approved: the gateway holds it; declined: refused; unknown: every call timed out or failed so far. */
  state: "approved" | "declined" | "unknown";
  amountMinor: number;
  capturedMinor: number;
  refundedMinor: number;
  captured: boolean;
  voided: boolean;
  /** An unknown authorization the gateway said it never made (a void by key was declined as unknown). */
  dead: boolean;
  /** Answered (approved or declined) calls per operation on this authorization. */
  answered: Record<"capture" | "void" | "refund", number>;
}

/** The ledger grouped by authorization, in the order authorizations were first tried. */
export function authorizations(ledger: readonly LedgerFact[]): AuthorizationView[] {
  const byKey = new Map<string, AuthorizationView>();
  const view = (key: string) => {
    let v = byKey.get(key);
    if (!v) {
      v = { key, state: "unknown", amountMinor: 0, capturedMinor: 0, refundedMinor: 0, captured: false, voided: false, dead: false, answered: { capture: 0, void: 0, refund: 0 } };
      byKey.set(key, v);
    }
    return v;
  };
  for (const e of ledger) {
    if (e.operation === "authorize") {
      const v = view(e.key);
      if (e.outcome === "approved") {
        v.state = "approved";
        v.amountMinor = e.amountMinor;
      } else if (e.outcome === "declined" && v.state !== "approved") v.state = "declined";
      continue;
    }
    const v = view(e.parentKey);
    if (e.outcome === "approved" || e.outcome === "declined") v.answered[e.operation]++;
    if (e.outcome === "declined" && e.operation === "void" && e.reason === NO_SUCH_AUTHORIZATION) v.dead = true;
    if (e.outcome !== "approved") continue;
    if (e.operation === "capture") {
      v.captured = true;
      v.capturedMinor += e.amountMinor;
    } else if (e.operation === "refund") v.refundedMinor += e.amountMinor;
    else v.voided = true;
  }
  // An authorization the gateway approved is not dead, whatever an earlier void by key heard.
  for (const v of byKey.values()) if (v.state === "approved") v.dead = false;
  return [...byKey.values()];
}

/** Approved captures minus approved refunds: what the customer has paid. */
export function netCharged(ledger: readonly LedgerFact[]): number {
  let net = 0;
  for (const e of ledger) {
    if (e.outcome !== "approved") continue;
    if (e.operation === "capture") net += e.amountMinor;
    else if (e.operation === "refund") net -= e.amountMinor;
  }
  return net;
}

export function refundedTotal(ledger: readonly LedgerFact[]): number {
  return ledger.filter((e) => e.outcome === "approved" && e.operation === "refund").reduce((s, e) => s + e.amountMinor, 0);
}

/** The key of a top-up authorization (a tip raised after the capture). */
export function topUpKey(orderId: string, n: number): string {
  return `${orderId}:auth:${n}`;
}

function opKey(auth: AuthorizationView, op: "capture" | "void" | "refund"): string {
  return `${auth.key}:${op}:${auth.answered[op] + 1}`;
}

/** The next gateway operation for the order, or none when the gateway matches what is due. */
export function nextAction(order: OrderMoney, ledger: readonly LedgerFact[]): SettleAction {
  if (order.status === "PAYMENT_PENDING") return { kind: "reconcile" };
  // A capture, void or refund whose answer was lost (timeout) may have moved money: it is
  // retried with its key and amount before anything else, so the ledger learns the truth
  // before deciding from it (what is due may have changed meanwhile).
  const answered = new Set(ledger.filter((e) => e.outcome === "approved" || e.outcome === "declined").map((e) => e.key));
  const lost = ledger.find((e) => e.operation !== "authorize" && e.outcome === "timeout" && !answered.has(e.key));
  if (lost && lost.operation !== "authorize") {
    return lost.operation === "void"
      ? { kind: "void", key: lost.key, authorizationKey: lost.parentKey }
      : { kind: lost.operation, key: lost.key, authorizationKey: lost.parentKey, amountMinor: lost.amountMinor };
  }
  const auths = authorizations(ledger);
  const net = netCharged(ledger);
  const due = order.dueMinor;
  const isOpen = (a: AuthorizationView) => a.state === "approved" && !a.captured && !a.voided;
  const unresolved = (a: AuthorizationView) => a.state === "unknown" && !a.voided && !a.dead;

  if (due > net) {
    const short = due - net;
    const open = auths.find(isOpen);
    // One capture per authorization: a partial capture releases the rest.
    if (open) return { kind: "capture", key: opKey(open, "capture"), authorizationKey: open.key, amountMinor: Math.min(short, open.amountMinor) };
    const prefix = `${order.orderId}:auth:`;
    const topUps = auths.filter((a) => a.key.startsWith(prefix));
    const pending = topUps.find(unresolved);
    if (pending) return { kind: "authorize", key: pending.key, amountMinor: short };
    return { kind: "authorize", key: topUpKey(order.orderId, topUps.length + 1), amountMinor: short };
  }
  if (due < net) {
    let excess = net - due;
    // Newest money first; each refund stays within what its authorization captured.
    for (const a of [...auths].reverse()) {
      const left = a.capturedMinor - a.refundedMinor;
      if (left <= 0) continue;
      excess = Math.min(excess, left);
      return { kind: "refund", key: opKey(a, "refund"), authorizationKey: a.key, amountMinor: excess };
    }
    throw new Error(`ledger of ${order.orderId} charges ${net} without a captured authorization`);
  }
  // What is due is paid. Before acceptance the placement's authorization stays open (it is
  // captured on acceptance); after it, anything still held is released, and an authorization
  // whose outcome never came back is voided by key in case the gateway made it late.
  if (order.status === "PLACED") return { kind: "none" };
  const release = auths.find((a) => isOpen(a) || unresolved(a));
  if (release) return { kind: "void", key: opKey(release, "void"), authorizationKey: release.key };
  return { kind: "none" };
}

export type PaymentState = "pending" | "authorized" | "captured" | "voided" | "partially_refunded" | "refunded" | "failed";

/** Where the order's money stands, from the ledger. */
export function paymentState(status: string, ledger: readonly LedgerFact[]): PaymentState {
  if (status === "PAYMENT_PENDING") return "pending";
  const auths = authorizations(ledger);
  const captured = auths.reduce((s, a) => s + a.capturedMinor, 0);
  const refunded = auths.reduce((s, a) => s + a.refundedMinor, 0);
  if (captured > 0) {
    if (refunded === 0) return "captured";
    return refunded >= captured ? "refunded" : "partially_refunded";
  }
  if (auths.some((a) => a.state === "approved" && !a.voided)) return "authorized";
  if (auths.some((a) => a.voided)) return "voided";
  return "failed";
}

/** Failed calls (timeout or error) since the last answered one: the retry backoff's exponent. */
export function trailingFailures(ledger: readonly LedgerFact[]): number {
  let n = 0;
  for (let i = ledger.length - 1; i >= 0; i--) {
    const o = ledger[i]!.outcome;
    if (o === "approved" || o === "declined") break;
    n++;
  }
  return n;
}

/** Retry delay after `failures` consecutive failed calls: base doubled per failure, capped. */
export function retryDelayMs(failures: number, baseMs: number, maxMs: number): number {
  const exp = Math.max(0, Math.min(30, failures - 1));
  return Math.min(maxMs, baseMs * 2 ** exp);
}
