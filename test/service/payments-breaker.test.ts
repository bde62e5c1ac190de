import assert from "node:assert/strict";
import type { CartLine } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { LedgerOperation, OrderStatus, PaymentOutcome, PaymentStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { CIRCUIT_OPEN, clearGatewayFaults, injectGatewayFault } from "../../services/order/payments/index.js";
import { uniqueId } from "../helpers/backends.js";
import { auth, checkLedgerInvariant, openPaymentsEnv, waitOrder, waitSettled, type PaymentsEnv } from "../helpers/payments-env.js";
import { until } from "../helpers/wait.js";

const RESET_MS = 800;

for (const kind of ["embedded", "real"] as const) {
  describe(`Payments circuit breaker (${kind === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis"})`, function () {
    this.timeout(90_000);
    let env: PaymentsEnv;

    before(async function () {
      try {
        env = await openPaymentsEnv(kind, {
          payments: { breakerMinCalls: 3, breakerErrorPct: 50, breakerWindowMs: 30_000, breakerResetMs: RESET_MS, retryBaseMs: 100, retryMaxMs: 300, maxPendingMs: 120_000 },
        });
      } catch (err) {
        if (kind === "real" && /unreachable/.test(String(err))) this.skip();
        throw err;
      }
    });
    after(async () => {
      await clearGatewayFaults(env?.db).catch(() => {});
      await env?.close();
    });

    const place = async (): Promise<Order> => {
      const token = await env.token("customer", `cust-${uniqueId()}`);
      const req = {
        restaurantId: env.rid,
        lines: [{ itemId: `${env.rid}-dosa`, quantity: 1, optionIds: [], note: "" }] as unknown as CartLine[],
        delivery: { location: { lat: 12.98, lng: 77.6 }, addressLine: "Church Street 5", instructions: "" },
        tipMinor: 0n,
        paymentToken: "tok_visa",
      };
      return (await env.client().placeOrder(req, auth(token, { "idempotency-key": uniqueId() }))).order!;
    };
    const authRows = async (id: string) => {
      const ops = auth(await env.token("ops", "op-1"));
      return (await env.client().getPaymentLedger({ orderId: id }, ops)).entries.filter((e) => e.operation === LedgerOperation.AUTHORIZE);
    };

    it("opens under gateway errors, fails fast while open, half-opens, and closes when the gateway recovers; the pending orders are then placed", async () => {
      await injectGatewayFault(env.db, "authorize", { kind: "error", rate: 1 });
      const pending: Order[] = [];
      // The first failures reach the gateway (its injected 5xx); then the breaker opens and refuses calls itself.
      let open: Order | undefined;
      for (let i = 0; i < 20 && !open; i++) {
        const o = await place();
        assert.equal(o.status, OrderStatus.PAYMENT_PENDING);
        assert.equal(o.paymentStatus, PaymentStatus.PENDING);
        pending.push(o);
        const [first] = await authRows(o.id);
        assert.equal(first!.outcome, PaymentOutcome.ERROR);
        if (first!.reason === CIRCUIT_OPEN) open = o;
        else assert.match(first!.reason, /injected authorize error/);
      }
      assert.ok(open, "the breaker opened");
      assert.ok(pending.length >= 2, "some calls reached the failing gateway before it opened");
      // While open, placements go PAYMENT_PENDING without calling the gateway.
      for (let i = 0; i < 3; i++) {
        const o = await place();
        pending.push(o);
        const [first] = await authRows(o.id);
        assert.equal(o.status, OrderStatus.PAYMENT_PENDING);
        assert.equal(first!.reason, CIRCUIT_OPEN);
      }
      // After the reset timeout one trial call goes through (half-open): it still fails, so the breaker opens again.
      await until(
        async () => {
          for (const o of pending.slice(-3)) if ((await authRows(o.id)).some((e) => /injected/.test(e.reason))) return true;
          return false;
        },
        20_000,
        "a half-open trial call reached the gateway",
      );
      // The gateway recovers: the next trial succeeds, the breaker closes, and the reconciler places every pending order.
      await clearGatewayFaults(env.db);
      for (const o of pending) {
        const got = await waitOrder(env, o.id, (x) => x.status === OrderStatus.PLACED, `pending order ${o.id} placed`, 30_000);
        assert.equal(got.paymentStatus, PaymentStatus.AUTHORIZED);
        const rows = await authRows(o.id);
        assert.equal(rows[rows.length - 1]!.outcome, PaymentOutcome.APPROVED);
        assert.ok(rows.every((r) => r.idempotencyKey === rows[0]!.idempotencyKey), "every retry used the placement's key");
      }
      // Closed: a new placement is authorized at once.
      await until(async () => (await place()).status === OrderStatus.PLACED, 10_000, "placements authorized again");
      await waitSettled(env.db, 30_000);
      await checkLedgerInvariant(env.db);
    });
  });
}
