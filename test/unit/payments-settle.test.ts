import assert from "node:assert/strict";
import fc from "fast-check";
import {
  NO_SUCH_AUTHORIZATION,
  netCharged,
  nextAction,
  paymentState,
  retryDelayMs,
  trailingFailures,
  type LedgerFact,
  type Outcome,
  type SettleAction,
} from "../../services/order/payments/settle.js";

const ORDER = "ord_1";
const AUTH = "place:abc";
const auth = (outcome: Outcome = "approved", amountMinor = 1000, key = AUTH): LedgerFact => ({ operation: "authorize", amountMinor, outcome, key, parentKey: "", reason: "" });
const op = (operation: LedgerFact["operation"], amountMinor: number, key: string, outcome: Outcome = "approved", parentKey = AUTH, reason = ""): LedgerFact => ({
  operation,
  amountMinor,
  outcome,
  key,
  parentKey,
  reason,
});

describe("payments settle rules", () => {
  it("leaves a PAYMENT_PENDING order to the reconciler", () => {
    assert.deepEqual(nextAction({ orderId: ORDER, status: "PAYMENT_PENDING", dueMinor: 0 }, [auth("timeout")]), { kind: "reconcile" });
  });

  it("keeps the authorization open while PLACED", () => {
    assert.deepEqual(nextAction({ orderId: ORDER, status: "PLACED", dueMinor: 0 }, [auth()]), { kind: "none" });
  });

  it("captures what is due on acceptance, with a key derived from the authorization", () => {
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CONFIRMED", dueMinor: 1000 }, [auth()]), {
      kind: "capture",
      key: `${AUTH}:capture:1`,
      authorizationKey: AUTH,
      amountMinor: 1000,
    });
  });

  it("retries a timed-out or failed call with the same key, and a declined one with the next", () => {
    const base = [auth(), op("capture", 1000, `${AUTH}:capture:1`, "timeout")];
    const a = nextAction({ orderId: ORDER, status: "CONFIRMED", dueMinor: 1000 }, base);
    assert.equal(a.kind === "capture" && a.key, `${AUTH}:capture:1`);
    const b = nextAction({ orderId: ORDER, status: "CONFIRMED", dueMinor: 1000 }, [...base, op("capture", 1000, `${AUTH}:capture:1`, "error")]);
    assert.equal(b.kind === "capture" && b.key, `${AUTH}:capture:1`);
    const c = nextAction({ orderId: ORDER, status: "CONFIRMED", dueMinor: 1000 }, [...base, op("capture", 1000, `${AUTH}:capture:1`, "declined")]);
    assert.equal(c.kind === "capture" && c.key, `${AUTH}:capture:2`);
  });

  it("first retries a call whose answer was lost, with its key and amount, whatever is due now", () => {
    const l = [auth(), op("capture", 1000, `${AUTH}:capture:1`), op("refund", 122, `${AUTH}:refund:1`, "timeout"), op("refund", 122, `${AUTH}:refund:1`, "error")];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "DELIVERED", dueMinor: 1300 }, l), { kind: "refund", key: `${AUTH}:refund:1`, authorizationKey: AUTH, amountMinor: 122 });
    const answered = [...l, op("refund", 122, `${AUTH}:refund:1`)];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "DELIVERED", dueMinor: 1300 }, answered), { kind: "authorize", key: `${ORDER}:auth:1`, amountMinor: 422 });
  });

  it("voids on rejection or early cancel, and is done once voided", () => {
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 0 }, [auth()]), { kind: "void", key: `${AUTH}:void:1`, authorizationKey: AUTH });
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 0 }, [auth(), op("void", 1000, `${AUTH}:void:1`)]), { kind: "none" });
  });

  it("captures only the fee on a late cancel before the capture ran (the rest is released)", () => {
    const a = nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 300 }, [auth()]);
    assert.deepEqual(a, { kind: "capture", key: `${AUTH}:capture:1`, authorizationKey: AUTH, amountMinor: 300 });
  });

  it("refunds the difference when the capture already ran", () => {
    const a = nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 300 }, [auth(), op("capture", 1000, `${AUTH}:capture:1`)]);
    assert.deepEqual(a, { kind: "refund", key: `${AUTH}:refund:1`, authorizationKey: AUTH, amountMinor: 700 });
  });

  it("authorizes a top-up for a tip raised after the capture, then captures it", () => {
    const l = [auth(), op("capture", 1000, `${AUTH}:capture:1`)];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "DELIVERED", dueMinor: 1200 }, l), { kind: "authorize", key: `${ORDER}:auth:1`, amountMinor: 200 });
    const l2 = [...l, auth("approved", 200, `${ORDER}:auth:1`)];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "DELIVERED", dueMinor: 1200 }, l2), {
      kind: "capture",
      key: `${ORDER}:auth:1:capture:1`,
      authorizationKey: `${ORDER}:auth:1`,
      amountMinor: 200,
    });
  });

  it("voids by key an authorization whose outcome never came back, and stops when the gateway says it never made it", () => {
    const l = [auth("timeout"), auth("error")];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 0 }, l), { kind: "void", key: `${AUTH}:void:1`, authorizationKey: AUTH });
    const dead = [...l, op("void", 0, `${AUTH}:void:1`, "declined", AUTH, "no such authorization")];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 0 }, dead), { kind: "none" });
    assert.equal(paymentState("CANCELLED", dead), "failed");
    // The gateway approved it later after all (a late answer): it is voided with the next key.
    const late = [...dead, auth("approved")];
    assert.deepEqual(nextAction({ orderId: ORDER, status: "CANCELLED", dueMinor: 0 }, late), { kind: "void", key: `${AUTH}:void:2`, authorizationKey: AUTH });
  });

  it("derives the payment status from the ledger", () => {
    assert.equal(paymentState("PAYMENT_PENDING", [auth("timeout")]), "pending");
    assert.equal(paymentState("PLACED", [auth()]), "authorized");
    assert.equal(paymentState("CANCELLED", [auth(), op("void", 1000, "v")]), "voided");
    assert.equal(paymentState("CONFIRMED", [auth(), op("capture", 1000, "c")]), "captured");
    assert.equal(paymentState("DELIVERED", [auth(), op("capture", 1000, "c"), op("refund", 300, "r")]), "partially_refunded");
    assert.equal(paymentState("DELIVERED", [auth(), op("capture", 1000, "c"), op("refund", 1000, "r")]), "refunded");
    assert.equal(paymentState("CANCELLED", [auth("declined")]), "failed");
  });

  it("backs off exponentially on consecutive failures, capped", () => {
    assert.equal(trailingFailures([auth(), op("capture", 1, "k", "timeout"), op("capture", 1, "k", "error")]), 2);
    assert.equal(trailingFailures([auth("timeout"), auth()]), 0);
    assert.deepEqual([1, 2, 3, 10].map((n) => retryDelayMs(n, 100, 1000)), [100, 200, 400, 1000]);
  });

  // -------------------------------------------------------------------------------------------
  // Property: whatever the sequence of due changes and gateway failures, repeatedly applying
  // nextAction against a model gateway converges to ledger net == due, never moves money twice
  // for one key, never captures before acceptance and leaves nothing held on a closed order.

  type GwOp = { op: string; amount: number; auth: string };
  function run(steps: { status: string; due: number }[], outcomes: ("ok" | "timeout" | "error")[]) {
    const gateway = new Map<string, GwOp>(); // key -> applied operation (the gateway's records)
    const auths = new Map<string, { amount: number; captured: number; refunded: number; voided: boolean }>();
    gateway.set(AUTH, { op: "authorize", amount: 1000, auth: "" });
    auths.set(AUTH, { amount: 1000, captured: 0, refunded: 0, voided: false });
    const ledger: LedgerFact[] = [auth("approved", 1000)];
    let o = 0;
    const apply = (a: Exclude<SettleAction, { kind: "none" | "reconcile" }>): { outcome: Outcome; amount: number; reason?: string } => {
      const prior = gateway.get(a.key);
      if (prior) return { outcome: "approved", amount: prior.amount };
      if (a.kind === "authorize") {
        gateway.set(a.key, { op: "authorize", amount: a.amountMinor, auth: "" });
        auths.set(a.key, { amount: a.amountMinor, captured: 0, refunded: 0, voided: false });
        return { outcome: "approved", amount: a.amountMinor };
      }
      const s = auths.get(a.authorizationKey);
      if (!s) return { outcome: "declined", amount: 0, reason: NO_SUCH_AUTHORIZATION };
      if (a.kind === "capture") {
        if (s.voided || s.captured > 0 || a.amountMinor > s.amount) return { outcome: "declined", amount: a.amountMinor };
        s.captured = a.amountMinor;
      } else if (a.kind === "refund") {
        if (a.amountMinor > s.captured - s.refunded) return { outcome: "declined", amount: a.amountMinor };
        s.refunded += a.amountMinor;
      } else {
        if (s.voided || s.captured > 0) return { outcome: "declined", amount: 0 };
        s.voided = true;
      }
      const amount = a.kind === "void" ? s.amount : a.amountMinor;
      gateway.set(a.key, { op: a.kind, amount, auth: a.authorizationKey });
      return { outcome: "approved", amount };
    };
    // One settlement job per due change: it runs until nothing is left to do or a call fails
    // (the job then re-queues, and what is due may change again before it runs).
    const settle = (status: string, due: number, untilFailure: boolean) => {
      for (let i = 0; i < 200; i++) {
        const a = nextAction({ orderId: ORDER, status, dueMinor: due }, ledger);
        if (a.kind === "none" || a.kind === "reconcile") return;
        const fate = outcomes[o++ % outcomes.length]!;
        const parentKey = a.kind === "authorize" ? "" : a.authorizationKey;
        const amount = a.kind === "void" ? 0 : a.amountMinor;
        if (fate === "error") {
          ledger.push({ operation: a.kind, amountMinor: amount, outcome: "error", key: a.key, parentKey, reason: "" });
          if (untilFailure) return;
          continue;
        }
        const r = apply(a);
        // A timeout: the gateway did it (or refused it), the answer was lost.
        const outcome = fate === "timeout" ? "timeout" : r.outcome;
        ledger.push({ operation: a.kind, amountMinor: outcome === "approved" ? r.amount : amount, outcome, key: a.key, parentKey, reason: outcome === "declined" ? (r.reason ?? "") : "" });
        if (fate === "timeout" && untilFailure) return;
      }
    };
    for (const step of steps) {
      settle(step.status, step.due, true);
      if (step.status === "PLACED") assert.equal([...gateway.values()].filter((g) => g.op === "capture").length, 0, "no capture before acceptance");
    }
    const last = steps[steps.length - 1]!;
    settle(last.status, last.due, false);
    assert.equal(nextAction({ orderId: ORDER, status: last.status, dueMinor: last.due }, ledger).kind, "none", "converged");
    assert.equal(netCharged(ledger), last.due, "net == due");
    // The gateway's records agree with the ledger.
    const gwNet = [...gateway.values()].reduce((s, g) => s + (g.op === "capture" ? g.amount : g.op === "refund" ? -g.amount : 0), 0);
    assert.equal(gwNet, last.due, "gateway net == due");
    if (last.status === "CANCELLED" || last.status === "DELIVERED") {
      for (const [k, s] of auths) assert.ok(s.voided || s.captured > 0, `authorization ${k} left open`);
    }
    // Approved ledger keys are unique: no key moved money twice.
    const keys = ledger.filter((l) => l.outcome === "approved").map((l) => l.key);
    assert.equal(new Set(keys).size, keys.length);
  }

  it("converges to what is due under any sequence of due changes and gateway failures (property)", () => {
    const outcome = fc.constantFrom<"ok" | "timeout" | "error">("ok", "ok", "timeout", "error");
    const path = fc
      .tuple(
        fc.array(fc.integer({ min: 0, max: 1500 }), { minLength: 0, maxLength: 5 }),
        fc.constantFrom("CANCELLED", "DELIVERED", "CONFIRMED"),
        fc.integer({ min: 0, max: 1000 }),
        fc.boolean(),
      )
      .map(([dues, end, fee, early]) => {
        if (early) return [{ status: "PLACED", due: 0 }, { status: "CANCELLED", due: 0 }];
        const steps = [{ status: "PLACED", due: 0 }, { status: "CONFIRMED", due: 1000 }];
        for (const d of dues) steps.push({ status: "DELIVERED", due: d });
        if (end === "CANCELLED" && dues.length === 0) steps.push({ status: "CANCELLED", due: Math.min(fee, 1000) });
        return steps;
      });
    fc.assert(
      fc.property(path, fc.array(outcome, { minLength: 1, maxLength: 12 }), (steps, outcomes) => {
        // At least one success in the cycle, or no call ever answers.
        run(steps, [...outcomes, "ok"]);
      }),
      { numRuns: 500 },
    );
  });
});
