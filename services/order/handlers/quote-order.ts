import type { HandlerContext } from "@connectrpc/connect";
import type { QuoteOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { priceCart, validateCartRequest, type OrderHandlerDeps } from "./common.js";

/** QuoteOrder: the authoritative price and ETA of a cart; writes nothing. Customer role (ops for support). */
export function quoteOrder(deps: OrderHandlerDeps) {
  return async (req: QuoteOrderRequest, ctx: HandlerContext) => {
    requireRole(ctx, "customer", "ops");
    const { delivery, tipMinor } = validateCartRequest(req);
    const { priced, currency, lines, totals } = await priceCart(deps, req, delivery, tipMinor, ctx.signal);
    const money = (m: number) => ({ amountMinor: BigInt(m), currency });
    return {
      lines: lines.map((l) => ({
        itemId: l.itemId,
        name: l.name,
        quantity: l.quantity,
        unitPrice: money(l.unitPriceMinor),
        lineTotal: money(l.lineTotalMinor),
        note: l.note,
        options: l.options.map((o) => ({ optionId: o.optionId, name: o.name, priceDelta: money(o.priceDeltaMinor) })),
      })),
      subtotal: money(totals.subtotalMinor),
      deliveryFee: money(totals.deliveryFeeMinor),
      tax: money(totals.taxMinor),
      tip: money(totals.tipMinor),
      total: money(totals.totalMinor),
      eta: priced.eta,
      distanceKm: priced.distanceKm,
    };
  };
}
