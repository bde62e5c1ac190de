import { create } from "@bufbuild/protobuf";
import { cityPricingFor } from "../../platform/config.js";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import {
  PriceCartResponseSchema,
  PricedLineSchema,
  PricedOptionSchema,
  type PriceCartRequest,
  type PriceCartResponse,
} from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, invalid } from "../../platform/errors.js";
import { CartError, priceCart as priceCartRule, validateCartShape, type CartLineInput } from "../domain.js";
import { eta, etaRestaurant, money, restaurantProto, type HandlerDeps } from "./proto.js";
import { MAX_ID_CHARS, requireId, requireLatLng } from "./validate.js";

function cartError(e: CartError): ConnectError {
  return e.kind === "invalid" ? invalid(e.field, e.problem) : new ConnectError(`${e.field}: ${e.problem}`, Code.FailedPrecondition);
}

/** The single source of prices: the order service quotes and places orders from this answer. */
export function priceCart(deps: HandlerDeps) {
  return async (req: PriceCartRequest, ctx: HandlerContext): Promise<PriceCartResponse> => {
    requireRole(ctx, "service", "ops");
    const restaurantId = requireId("restaurant_id", req.restaurantId);
    const delivery = requireLatLng("delivery_location", req.deliveryLocation);
    const lines: CartLineInput[] = req.lines.map((l, i) => {
      if (l.itemId.length > MAX_ID_CHARS) throw invalid(`lines[${i}].item_id`, `at most ${MAX_ID_CHARS} characters`);
      l.optionIds.forEach((o, j) => {
        if (!o || o.length > MAX_ID_CHARS) throw invalid(`lines[${i}].option_ids[${j}]`, "must be a non-empty id");
      });
      return { itemId: l.itemId, quantity: l.quantity, optionIds: [...l.optionIds], note: l.note };
    });
    try {
      validateCartShape(lines);
    } catch (e) {
      if (e instanceof CartError) throw cartError(e);
      throw e;
    }
    const cart = await deps.store.getCart(restaurantId, lines.map((l) => l.itemId));
    if (!cart) throw new NotFoundError(`restaurant ${restaurantId} not found`);
    const { restaurant, items } = cart;
    const now = deps.now();
    let priced;
    try {
      priced = priceCartRule({ restaurant, items, lines, deliveryLocation: delivery, fees: cityPricingFor(deps.config.orders, restaurant.city), now });
    } catch (e) {
      if (e instanceof CartError) throw cartError(e);
      throw e;
    }
    const cur = priced.currency;
    const quote = await deps.eta.quote(etaRestaurant(restaurant), delivery);
    return create(PriceCartResponseSchema, {
      restaurant: restaurantProto(restaurant, now),
      lines: priced.lines.map((l) =>
        create(PricedLineSchema, {
          itemId: l.itemId,
          name: l.name,
          quantity: l.quantity,
          unitPrice: money(l.unitPriceMinor, cur),
          options: l.options.map((o) => create(PricedOptionSchema, { optionId: o.optionId, groupId: o.groupId, name: o.name, priceDelta: money(o.priceDeltaMinor, cur) })),
          lineTotal: money(l.lineTotalMinor, cur),
          note: l.note,
        }),
      ),
      subtotal: money(priced.subtotalMinor, cur),
      distanceKm: Math.round(priced.distanceKm * 1000) / 1000,
      deliveryFee: money(priced.deliveryFeeMinor, cur),
      eta: eta(quote),
    });
  };
}
