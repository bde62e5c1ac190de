import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import type { CartLine } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { LedgerOperation, OrderStatus, PaymentOutcome, PaymentStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { uniqueId } from "../helpers/backends.js";
import { expectCode } from "../helpers/expect.js";
import { until } from "../helpers/wait.js";
import { clearGatewayFaults, injectGatewayFault } from "../../services/order/payments/index.js";
import { auth, checkLedgerInvariant, openPaymentsEnv, waitOrder, waitSettled, type PaymentsEnv } from "../helpers/payments-env.js";

const MAX_PENDING_MS = 2500;

for (const kind of ["embedded", "real"] as const) {
  describe(`Payments (${kind === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis"})`, function () {
    this.timeout(90_000);
    let env: PaymentsEnv;
    let t: Record<string, string>;

    before(async function () {
      try {
        env = await openPaymentsEnv(kind, {
          // The breaker stays out of these tests (payments-breaker.test.ts has it).
          payments: { retryBaseMs: 50, retryMaxMs: 400, maxPendingMs: MAX_PENDING_MS, breakerMinCalls: 100_000 },
        });
      } catch (err) {
        if (kind === "real" && /unreachable/.test(String(err))) this.skip();
        throw err;
      }
      t = {
        restaurant: await env.token("restaurant", "tablet-1", env.rid),
        ops: await env.token("ops", "op-1"),
        service: await env.token("service", "dispatch"),
      };
    });
    after(async () => {
      await env?.close();
    });

    const customer = async () => {
      const sub = `cust-${uniqueId()}`;
      return { sub, token: await env.token("customer", sub) };
    };
    const request = (token: string, tipMinor = 150n) => ({
      restaurantId: env.rid,
      lines: [{ itemId: `${env.rid}-dosa`, quantity: 2, optionIds: [], note: "" }] as unknown as CartLine[],
      delivery: { location: { lat: 12.98, lng: 77.6 }, addressLine: "Church Street 5", instructions: "" },
      tipMinor,
      paymentToken: token,
    });
    const place = async (c: { token: string }, paymentToken = "tok_visa", tip = 150n): Promise<Order> =>
      (await env.client().placeOrder(request(paymentToken, tip), auth(c.token, { "idempotency-key": uniqueId() }))).order!;
    const ledger = async (id: string, token = t.ops) => (await env.client().getPaymentLedger({ orderId: id }, auth(token))).entries;
    const total = (o: Order) => Number(o.total!.amountMinor);
    const charged = (o: Order) => Number(o.charged!.amountMinor);

    /** An order picked up by a fresh driver (placed with tip 150), and that driver's call options. */
    async function pickedUp(c: { token: string }): Promise<{ o: Order; d: ReturnType<typeof auth> }> {
      const o = await place(c);
      const r = auth(t.restaurant);
      const driver = `drv-${uniqueId()}`;
      const d = auth(await env.token("driver", driver));
      await env.client().acceptOrder({ orderId: o.id, prepMinutes: 10 }, r);
      await env.client().assignDriver({ orderId: o.id, driverId: driver, fencingToken: 1n }, auth(t.service));
      await env.client().startPreparing({ orderId: o.id }, r);
      await env.client().markReady({ orderId: o.id }, r);
      await env.client().confirmPickup({ orderId: o.id }, d);
      return { o, d };
    }

    /** An order delivered by a fresh driver (placed with tip 150). */
    async function delivered(c: { token: string }): Promise<Order> {
      const { o, d } = await pickedUp(c);
      return (await env.client().confirmDelivery({ orderId: o.id }, d)).order!;
    }

    describe("placement", () => {
      it("requires a payment token", async () => {
        const c = await customer();
        await expectCode(env.client().placeOrder(request(""), auth(c.token, { "idempotency-key": uniqueId() })), Code.InvalidArgument, /payment_token/);
      });

      it("answers a decline with FAILED_PRECONDITION and its reason, and writes no order", async () => {
        const c = await customer();
        await expectCode(place(c, "tok_decline"), Code.FailedPrecondition, /card declined/);
        await expectCode(place(c, "tok_insufficient_funds"), Code.FailedPrecondition, /insufficient funds/);
        await expectCode(place(c, "tok_unknown"), Code.FailedPrecondition, /unknown payment token/);
        const n = await sql<{ n: string }>`select count(*) as n from orders where customer_id = ${c.sub}`.execute(env.db.kysely);
        assert.equal(Number(n.rows[0]!.n), 0);
      });

      it("authorizes the total and places the order as AUTHORIZED", async () => {
        const c = await customer();
        const o = await place(c);
        assert.equal(o.status, OrderStatus.PLACED);
        assert.equal(o.paymentStatus, PaymentStatus.AUTHORIZED);
        const entries = await ledger(o.id, c.token);
        assert.deepEqual(entries.map((e) => [LedgerOperation[e.operation], PaymentOutcome[e.outcome], Number(e.amount!.amountMinor)]), [["AUTHORIZE", "APPROVED", total(o)]]);
        assert.ok(entries[0]!.gatewayReference);
      });

      it("leaves a timed-out authorization PAYMENT_PENDING, and the reconciler places it with the gateway's truth", async () => {
        const c = await customer();
        const o = await place(c, "tok_timeout");
        assert.equal(o.status, OrderStatus.PAYMENT_PENDING);
        assert.equal(o.paymentStatus, PaymentStatus.PENDING);
        const placed = await waitOrder(env, o.id, (x) => x.status === OrderStatus.PLACED, "reconciled to PLACED");
        assert.equal(placed.paymentStatus, PaymentStatus.AUTHORIZED);
        const entries = await ledger(o.id);
        assert.deepEqual(entries.map((e) => [LedgerOperation[e.operation], PaymentOutcome[e.outcome]]), [["AUTHORIZE", "TIMEOUT"], ["AUTHORIZE", "APPROVED"]]);
        assert.equal(entries[0]!.idempotencyKey, entries[1]!.idempotencyKey, "the retry reuses the key");
        // The restaurant can now accept it, and the money is captured.
        await env.client().acceptOrder({ orderId: o.id, prepMinutes: 10 }, auth(t.restaurant));
        await waitOrder(env, o.id, (x) => x.paymentStatus === PaymentStatus.CAPTURED && charged(x) === total(o), "captured");
      });

      it("cancels an order whose authorization never answers (tok_error) after the maximum pending time, with nothing charged", async () => {
        const c = await customer();
        const o = await place(c, "tok_error");
        assert.equal(o.status, OrderStatus.PAYMENT_PENDING);
        const started = Date.now();
        const done = await waitOrder(env, o.id, (x) => x.status === OrderStatus.CANCELLED && x.paymentStatus === PaymentStatus.FAILED, "cancelled", 30_000);
        assert.ok(Date.now() - started >= MAX_PENDING_MS - 500, "not before the maximum pending time");
        assert.match(done.cancellationReason, /payment not confirmed/);
        assert.equal(charged(done), 0);
        // The cancellation's settlement voids by key in case the gateway authorized late (it did not: declined as unknown).
        await until(async () => (await ledger(o.id)).some((e) => e.operation === LedgerOperation.VOID), 10_000, "void by key");
        const entries = await ledger(o.id);
        assert.ok(entries.filter((e) => e.operation === LedgerOperation.AUTHORIZE).length >= 2, "the reconciler retried");
        assert.ok(entries.every((e) => e.outcome !== PaymentOutcome.APPROVED), "nothing approved");
        const v = entries.find((e) => e.operation === LedgerOperation.VOID)!;
        assert.equal(v.outcome, PaymentOutcome.DECLINED);
        assert.equal(v.reason, "no such authorization");
      });
    });

    describe("settlement", () => {
      it("captures the total on acceptance", async () => {
        const c = await customer();
        const o = await place(c);
        await env.client().acceptOrder({ orderId: o.id, prepMinutes: 10 }, auth(t.restaurant));
        const got = await waitOrder(env, o.id, (x) => x.paymentStatus === PaymentStatus.CAPTURED, "captured");
        assert.equal(charged(got), total(o));
        const entries = await ledger(o.id);
        assert.deepEqual(entries.map((e) => [LedgerOperation[e.operation], PaymentOutcome[e.outcome], Number(e.amount!.amountMinor)]), [
          ["AUTHORIZE", "APPROVED", total(o)],
          ["CAPTURE", "APPROVED", total(o)],
        ]);
      });

      it("voids the authorization on rejection and on an early customer cancel", async () => {
        const c = await customer();
        const a = await place(c);
        const b = await place(c);
        await env.client().rejectOrder({ orderId: a.id, reason: "closing" }, auth(t.restaurant));
        await env.client().cancelOrder({ orderId: b.id, reason: "changed my mind" }, auth(c.token));
        for (const o of [a, b]) {
          const got = await waitOrder(env, o.id, (x) => x.paymentStatus === PaymentStatus.VOIDED, "voided");
          assert.equal(charged(got), 0);
          const ops = (await ledger(o.id)).map((e) => [LedgerOperation[e.operation], PaymentOutcome[e.outcome]]);
          assert.deepEqual(ops, [["AUTHORIZE", "APPROVED"], ["VOID", "APPROVED"]]);
        }
      });

      it("keeps the late-cancel fee and releases the rest when the customer cancels while PREPARING", async () => {
        const c = await customer();
        const o = await place(c);
        const r = auth(t.restaurant);
        await env.client().acceptOrder({ orderId: o.id, prepMinutes: 10 }, r);
        await env.client().startPreparing({ orderId: o.id }, r);
        const cancelled = (await env.client().cancelOrder({ orderId: o.id, reason: "too slow" }, auth(c.token))).order!;
        const fee = Number(cancelled.cancellationFee!.amountMinor);
        assert.ok(fee > 0 && fee < total(o));
        const got = await waitOrder(env, o.id, (x) => charged(x) === fee && x.paymentStatus !== PaymentStatus.AUTHORIZED, "fee charged");
        assert.ok([PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED].includes(got.paymentStatus), PaymentStatus[got.paymentStatus]);
      });

      it("refunds everything when ops cancel after pickup", async () => {
        const { o } = await pickedUp(await customer());
        await waitOrder(env, o.id, (x) => x.paymentStatus === PaymentStatus.CAPTURED, "captured");
        await env.client().cancelOrder({ orderId: o.id, reason: "driver crashed" }, auth(t.ops));
        const got = await waitOrder(env, o.id, (x) => x.paymentStatus === PaymentStatus.REFUNDED, "refunded");
        assert.equal(charged(got), 0);
        assert.equal(Number(got.refunded!.amountMinor), total(o));
      });
    });

    describe("RefundOrder", () => {
      it("refunds part, then the rest, then refuses more than is charged", async () => {
        const c = await customer();
        const o = await delivered(c);
        await waitOrder(env, o.id, (x) => charged(x) === total(o), "captured");
        const ops = auth(t.ops);
        await env.client().refundOrder({ orderId: o.id, amountMinor: 300n, reason: "cold food" }, ops);
        let got = await waitOrder(env, o.id, (x) => charged(x) === total(o) - 300, "partial refund");
        assert.equal(got.paymentStatus, PaymentStatus.PARTIALLY_REFUNDED);
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: BigInt(total(o)), reason: "x" }, ops), Code.FailedPrecondition, /exceeds/);
        await env.client().refundOrder({ orderId: o.id, amountMinor: 0n, reason: "never arrived" }, ops);
        got = await waitOrder(env, o.id, (x) => charged(x) === 0, "full refund");
        assert.equal(got.paymentStatus, PaymentStatus.REFUNDED);
        assert.equal(Number(got.refunded!.amountMinor), total(o));
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: 1n, reason: "more" }, ops), Code.FailedPrecondition, /nothing/);
        const refunds = (await ledger(o.id)).filter((e) => e.operation === LedgerOperation.REFUND && e.outcome === PaymentOutcome.APPROVED);
        assert.deepEqual(refunds.map((e) => [Number(e.amount!.amountMinor), e.reason]), [[300, "cold food"], [total(o) - 300, "never arrived"]]);
      });

      it("validates the request and is for ops only", async () => {
        const c = await customer();
        const o = await place(c);
        const ops = auth(t.ops);
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: 0n, reason: "" }, ops), Code.InvalidArgument, /reason/);
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: -1n, reason: "x" }, ops), Code.InvalidArgument, /amount_minor/);
        await expectCode(env.client().refundOrder({ orderId: "", amountMinor: 0n, reason: "x" }, ops), Code.InvalidArgument, /order_id/);
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: 0n, reason: "x" }, auth(c.token)), Code.PermissionDenied);
        await expectCode(env.client().refundOrder({ orderId: "ord_missing", amountMinor: 0n, reason: "x" }, ops), Code.NotFound);
        // Nothing is charged before acceptance.
        await expectCode(env.client().refundOrder({ orderId: o.id, amountMinor: 0n, reason: "x" }, ops), Code.FailedPrecondition, /nothing/);
      });
    });

    describe("AdjustTip", () => {
      it("raises the tip after delivery (a new authorization and capture) and lowers it (a refund)", async () => {
        const c = await customer();
        const o = await delivered(c);
        await waitOrder(env, o.id, (x) => charged(x) === total(o), "captured");
        const raised = (await env.client().adjustTip({ orderId: o.id, tipMinor: 500n }, auth(c.token))).order!;
        assert.equal(Number(raised.tip!.amountMinor), 500);
        assert.equal(total(raised), total(o) + 350);
        await waitOrder(env, o.id, (x) => charged(x) === total(o) + 350, "raise collected");
        const lowered = (await env.client().adjustTip({ orderId: o.id, tipMinor: 0n }, auth(c.token))).order!;
        assert.equal(total(lowered), total(o) - 150);
        await waitOrder(env, o.id, (x) => charged(x) === total(o) - 150, "lowered tip refunded");
        const entries = (await ledger(o.id, c.token)).filter((e) => e.outcome === PaymentOutcome.APPROVED);
        assert.deepEqual(entries.slice(0, 4).map((e) => [LedgerOperation[e.operation], Number(e.amount!.amountMinor)]), [
          ["AUTHORIZE", total(o)],
          ["CAPTURE", total(o)],
          ["AUTHORIZE", 350],
          ["CAPTURE", 350],
        ]);
        assert.equal(entries[2]!.idempotencyKey, `${o.id}:auth:1`);
        // The 500 comes back from the newest money first: the top-up's 350, then 150 of the first capture.
        const refunds = entries.slice(4);
        assert.ok(refunds.every((e) => e.operation === LedgerOperation.REFUND));
        assert.deepEqual(refunds.map((e) => Number(e.amount!.amountMinor)), [350, 150]);
      });

      it("keeps the old tip when the card refuses the raise after the capture, and records the refusal", async () => {
        const c = await customer();
        const o = await delivered(c);
        await waitOrder(env, o.id, (x) => charged(x) === total(o), "captured");
        await injectGatewayFault(env.db, "authorize", { kind: "decline", count: 1 });
        try {
          const raised = (await env.client().adjustTip({ orderId: o.id, tipMinor: 450n }, auth(c.token))).order!;
          assert.equal(total(raised), total(o) + 300);
          const back = await waitOrder(env, o.id, (x) => Number(x.tip!.amountMinor) === 150, "raise dropped");
          assert.equal(total(back), total(o));
          assert.equal(charged(back), total(o));
        } finally {
          await clearGatewayFaults(env.db);
        }
        const declined = (await ledger(o.id, c.token)).filter((e) => e.outcome === PaymentOutcome.DECLINED);
        assert.deepEqual(declined.map((e) => [LedgerOperation[e.operation], Number(e.amount!.amountMinor), e.idempotencyKey]), [["AUTHORIZE", 300, `${o.id}:auth:1`]]);
      });

      it("changes the tip before acceptance without moving money, and the capture takes the new total", async () => {
        const c = await customer();
        const o = await place(c);
        const raised = (await env.client().adjustTip({ orderId: o.id, tipMinor: 400n }, auth(c.token))).order!;
        assert.equal(total(raised), total(o) + 250);
        await env.client().acceptOrder({ orderId: o.id, prepMinutes: 10 }, auth(t.restaurant));
        await waitOrder(env, o.id, (x) => charged(x) === total(raised), "new total captured");
      });

      it("refuses after the tip window, on cancelled orders, and for anyone but the order's customer", async () => {
        const c = await customer();
        const o = await delivered(c);
        const other = await customer();
        await expectCode(env.client().adjustTip({ orderId: o.id, tipMinor: 10n }, auth(other.token)), Code.NotFound);
        await expectCode(env.client().adjustTip({ orderId: o.id, tipMinor: 10n }, auth(t.ops)), Code.PermissionDenied);
        await expectCode(env.client().adjustTip({ orderId: o.id, tipMinor: 100_001n }, auth(c.token)), Code.InvalidArgument, /tip_minor/);
        await sql`update orders set delivered_at = ${new Date(Date.now() - env.cfg.orders.tipWindowMs - 1000)} where id = ${o.id}`.execute(env.db.kysely as Kysely<any>);
        await expectCode(env.client().adjustTip({ orderId: o.id, tipMinor: 10n }, auth(c.token)), Code.FailedPrecondition, /tip window/);
        const x = await place(c);
        await env.client().cancelOrder({ orderId: x.id, reason: "no" }, auth(c.token));
        await expectCode(env.client().adjustTip({ orderId: x.id, tipMinor: 10n }, auth(c.token)), Code.FailedPrecondition, /CANCELLED/);
      });
    });

    describe("GetPaymentLedger", () => {
      it("is for ops and the order's customer", async () => {
        const c = await customer();
        const o = await place(c);
        assert.equal((await ledger(o.id, c.token)).length, 1);
        assert.equal((await ledger(o.id, t.ops)).length, 1);
        const other = await customer();
        await expectCode(ledger(o.id, other.token), Code.NotFound);
        await expectCode(ledger(o.id, t.restaurant), Code.PermissionDenied);
        await expectCode(ledger(o.id, await env.token("driver", "drv-x")), Code.PermissionDenied);
        await expectCode(ledger("", t.ops), Code.InvalidArgument, /order_id/);
      });
    });

    describe("the ledger", () => {
      // Runs after the suites above (mocha runs nested suites in order).
      it("reconciles with every order's state", async () => {
        await waitSettled(env.db, 30_000);
        const s = await checkLedgerInvariant(env.db);
        assert.ok(s.orders > 10 && s.captured > 0 && s.refunded > 0 && s.voided > 0, JSON.stringify(s));
      });
    });
  });
}
