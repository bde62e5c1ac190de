import type { HandlerContext } from "@connectrpc/connect";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { CatalogService, CartLine, PriceCartResponse } from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import type { DeliveryAddress } from "../../../gen/dabba/order/v1/order_pb.js";
import { cityPricingFor, type Config } from "../../platform/config.js";
import { invalid, requireId } from "../../platform/errors.js";
import type { Logger } from "../../platform/logger.js";
import type { RedisPorts } from "../../platform/redis.js";
import { principalOf } from "../../platform/auth.js";
import { computeTotals, type CommandRequest, type Totals } from "../domain.js";
import type { CommandExtras, OrderStore } from "../store.js";
import type { StoredLine } from "../db/tables.js";
import type { Order } from "../../../gen/dabba/order/v1/order_pb.js";
import type { Payments } from "../payments/index.js";

/** What every order handler needs. */
export interface OrderHandlerDeps {
  config: Config;
  store: OrderStore;
  redis: RedisPorts;
  logger: Logger;
  catalog: () => Client<typeof CatalogService>;
  /** The payment port, ledger and settlement (services/order/payments). */
  payments: Payments;
}

/** Channel carrying a restaurant's changed orders (protobuf Order) to its watchers in every process. */
export function restaurantChannel(restaurantId: string): string {
  return `restaurant-orders:${restaurantId}`;
}

// ---------------------------------------------------------------------------------------------
// Validation: INVALID_ARGUMENT naming the field; nothing is written before it passes.

export const LIMITS = Object.freeze({
  maxLines: 50,
  maxQuantity: 99,
  maxOptionsPerLine: 20,
  address: 200,
  instructions: 500,
  note: 200,
  reason: 500,
  maxTipMinor: 100_000,
  idempotencyKeyMax: 128,
  pageSizeMax: 100,
  pageSizeDefault: 20,
  pageTokenMax: 512,
  prepMinutesMax: 240,
});

function chars(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export { requireId };

export function boundedText(field: string, v: string, max: number, required = false): string {
  if (required && v.trim() === "") throw invalid(field, "is required");
  if (chars(v) > max) throw invalid(field, `must be at most ${max} characters`);
  return v;
}

export function validateCart(lines: CartLine[]): void {
  if (lines.length === 0) throw invalid("lines", "cart is empty");
  if (lines.length > LIMITS.maxLines) throw invalid("lines", `at most ${LIMITS.maxLines} lines`);
  lines.forEach((l, i) => {
    requireId(`lines[${i}].item_id`, l.itemId);
    if (!Number.isInteger(l.quantity) || l.quantity < 1 || l.quantity > LIMITS.maxQuantity) {
      throw invalid(`lines[${i}].quantity`, `must be 1 to ${LIMITS.maxQuantity}`);
    }
    if (l.optionIds.length > LIMITS.maxOptionsPerLine) throw invalid(`lines[${i}].option_ids`, `at most ${LIMITS.maxOptionsPerLine}`);
    l.optionIds.forEach((o, j) => requireId(`lines[${i}].option_ids[${j}]`, o));
    boundedText(`lines[${i}].note`, l.note, LIMITS.note);
  });
}

export function validateDelivery(d: DeliveryAddress | undefined): { lat: number; lng: number; address: string; instructions: string } {
  if (!d) throw invalid("delivery", "is required");
  const loc = d.location;
  if (!loc) throw invalid("delivery.location", "is required");
  if (!Number.isFinite(loc.lat) || loc.lat < -90 || loc.lat > 90) throw invalid("delivery.location.lat", "must be a finite number from -90 to 90");
  if (!Number.isFinite(loc.lng) || loc.lng < -180 || loc.lng > 180) throw invalid("delivery.location.lng", "must be a finite number from -180 to 180");
  boundedText("delivery.address_line", d.addressLine, LIMITS.address);
  boundedText("delivery.instructions", d.instructions, LIMITS.instructions);
  return { lat: loc.lat, lng: loc.lng, address: d.addressLine, instructions: d.instructions };
}

export function validateTip(tip: bigint): number {
  if (tip < 0n || tip > BigInt(LIMITS.maxTipMinor)) throw invalid("tip_minor", `must be 0 to ${LIMITS.maxTipMinor}`);
  return Number(tip);
}

/** The cart fields shared by QuoteOrder and PlaceOrder, validated. */
export function validateCartRequest(req: { restaurantId: string; lines: CartLine[]; delivery?: DeliveryAddress; tipMinor: bigint }) {
  requireId("restaurant_id", req.restaurantId);
  validateCart(req.lines);
  const delivery = validateDelivery(req.delivery);
  const tipMinor = validateTip(req.tipMinor);
  return { delivery, tipMinor };
}

// ---------------------------------------------------------------------------------------------
// Pricing: prices come only from CatalogService.PriceCart.

export interface PricedCart {
  priced: PriceCartResponse;
  currency: string;
  lines: StoredLine[];
  totals: Totals;
}

const PASSED_THROUGH = new Set([Code.NotFound, Code.FailedPrecondition, Code.InvalidArgument]);

export async function priceCart(
  deps: OrderHandlerDeps,
  req: { restaurantId: string; lines: CartLine[] },
  delivery: { lat: number; lng: number },
  tipMinor: number,
  signal?: AbortSignal,
): Promise<PricedCart> {
  let priced: PriceCartResponse;
  try {
    priced = await deps.catalog().priceCart(
      { restaurantId: req.restaurantId, lines: req.lines, deliveryLocation: { lat: delivery.lat, lng: delivery.lng } },
      { signal },
    );
  } catch (err) {
    const ce = ConnectError.from(err);
    if (PASSED_THROUGH.has(ce.code)) throw new ConnectError(ce.rawMessage, ce.code);
    if (ce.code === Code.Unavailable || ce.code === Code.DeadlineExceeded || ce.code === Code.ResourceExhausted) {
      throw new ConnectError("catalog is unavailable; retry", Code.Unavailable);
    }
    deps.logger.error({ err }, "PriceCart failed");
    throw new ConnectError("internal error", Code.Internal);
  }
  const currency = priced.subtotal?.currency || priced.restaurant?.currency || deps.config.orders.currency;
  const lines: StoredLine[] = priced.lines.map((l) => ({
    itemId: l.itemId,
    name: l.name,
    quantity: l.quantity,
    unitPriceMinor: Number(l.unitPrice?.amountMinor ?? 0n),
    lineTotalMinor: Number(l.lineTotal?.amountMinor ?? 0n),
    note: l.note,
    options: l.options.map((o) => ({ optionId: o.optionId, name: o.name, priceDeltaMinor: Number(o.priceDelta?.amountMinor ?? 0n) })),
  }));
  const totals = computeTotals({
    subtotalMinor: Number(priced.subtotal?.amountMinor ?? 0n),
    deliveryFeeMinor: Number(priced.deliveryFee?.amountMinor ?? 0n),
    tipMinor,
    taxBps: cityPricingFor(deps.config.orders, priced.restaurant?.city).taxBps,
  });
  return { priced, currency, lines, totals };
}

// ---------------------------------------------------------------------------------------------
// Commands.

/** Validates the order id and runs one command through the store's decide + CAS. */
export async function runCommand(
  deps: OrderHandlerDeps,
  ctx: HandlerContext,
  orderId: string,
  req: CommandRequest,
  extras: CommandExtras = {},
): Promise<{ order: Order }> {
  const principal = principalOf(ctx);
  requireId("order_id", orderId);
  const order = await deps.store.execute(orderId, req, principal, extras);
  return { order };
}
