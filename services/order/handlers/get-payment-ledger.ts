import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { LedgerEntrySchema, LedgerOperation, PaymentOutcome } from "../../../gen/dabba/order/v1/order_pb.js";
import type { GetPaymentLedgerRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError } from "../../platform/errors.js";
import { requireId, type OrderHandlerDeps } from "./common.js";

const OPERATIONS = { authorize: LedgerOperation.AUTHORIZE, capture: LedgerOperation.CAPTURE, void: LedgerOperation.VOID, refund: LedgerOperation.REFUND };
const OUTCOMES = { approved: PaymentOutcome.APPROVED, declined: PaymentOutcome.DECLINED, timeout: PaymentOutcome.TIMEOUT, error: PaymentOutcome.ERROR };

/** GetPaymentLedger: every gateway call for the order and its result, oldest first. Ops, and the order's customer (others NOT_FOUND). */
export function getPaymentLedger(deps: OrderHandlerDeps) {
  return async (req: GetPaymentLedgerRequest, ctx: HandlerContext) => {
    const principal = requireRole(ctx, "ops", "customer");
    requireId("order_id", req.orderId);
    const order = await deps.store.get(req.orderId);
    if (!order || (principal.role === "customer" && order.customerId !== principal.sub)) throw new NotFoundError("order not found");
    const entries = await deps.payments.ledger.read(req.orderId);
    return {
      entries: entries.map((e) =>
        create(LedgerEntrySchema, {
          id: e.id,
          orderId: e.orderId,
          operation: OPERATIONS[e.operation],
          amount: { amountMinor: BigInt(e.amountMinor), currency: e.currency },
          outcome: OUTCOMES[e.outcome],
          idempotencyKey: e.key,
          gatewayReference: e.reference,
          reason: e.reason,
          at: timestampFromDate(e.at),
        }),
      ),
    };
  };
}
