import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { MoneySchema } from "../../../gen/dabba/common/v1/common_pb.js";
import type { ListAvailableDeliveriesRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { invalid, requireLatLng } from "../../platform/errors.js";
import { haversineKm } from "../../platform/redis.js";
import { estimatedEarningsMinor } from "../domain.js";
import type { DispatchHandlerDeps } from "./common.js";

const DEFAULT_RADIUS_KM = 5;
const MAX_RADIUS_KM = 20;
const MAX_RESULTS = 50;
/** Rows read from the box before the exact distance filter. */
const SCAN_LIMIT = 500;

/** ListAvailableDeliveries: unassigned orders (not under an open offer) near a point, nearest first. Online drivers. */
export function listAvailableDeliveries(deps: DispatchHandlerDeps) {
  return async (req: ListAvailableDeliveriesRequest, ctx: HandlerContext) => {
    const driverId = requireRole(ctx, "driver").sub;
    const at = requireLatLng("location", req.location);
    if (!Number.isFinite(req.radiusKm) || req.radiusKm < 0 || req.radiusKm > MAX_RADIUS_KM) {
      throw invalid("radius_km", `must be 0 (default ${DEFAULT_RADIUS_KM}) to ${MAX_RADIUS_KM}`);
    }
    const { state } = await deps.engine.requireOnline(driverId);
    const r = req.radiusKm || DEFAULT_RADIUS_KM;
    const dLat = r / 111;
    const dLng = r / (111 * Math.max(0.01, Math.cos((at.lat * Math.PI) / 180)));
    const rows = await deps.store.searchingInBox({ south: at.lat - dLat, north: at.lat + dLat, west: at.lng - dLng, east: at.lng + dLng }, SCAN_LIMIT);
    const deliveries = rows
      .filter((j) => j.city === state.city)
      .map((j) => ({ j, d: haversineKm(at.lng, at.lat, j.pickup_lng, j.pickup_lat) }))
      .filter((x) => x.d <= r)
      .sort((a, b) => a.d - b.d)
      .slice(0, MAX_RESULTS)
      .map(({ j, d }) => ({
        orderId: j.order_id,
        restaurantName: j.restaurant_name,
        pickup: { lat: j.pickup_lat, lng: j.pickup_lng },
        distanceKm: Math.round(d * 1000) / 1000,
        estimatedEarnings: create(MoneySchema, {
          amountMinor: BigInt(estimatedEarningsMinor(Number(j.pay_minor), 0, d, j.delivery_km)),
          currency: j.currency,
        }),
      }));
    return { deliveries };
  };
}
