import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { DriverPositionSchema, type DriverPosition } from "../../../gen/dabba/location/v1/location_pb.js";
import type { GetDriverLocationRequest } from "../../../gen/dabba/location/v1/location_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { NotFoundError, invalid } from "../../platform/errors.js";
import type { RedisPorts } from "../../platform/redis.js";
import { driverFixKey } from "../keys.js";
import type { ActiveOrders } from "../types.js";

export interface GetDriverLocationDeps {
  redis: RedisPorts;
  activeOrders: ActiveOrders;
}

const ID_MAX = 128;

/** Validates an id field: required, at most 128 characters. */
export function requireId(field: string, v: string): string {
  if (v === "") throw invalid(field, "is required");
  if (v.length > ID_MAX) throw invalid(field, `must be at most ${ID_MAX} characters`);
  return v;
}

/**
 * The DriverPosition of a driver-fix hash (keys.ts driverFixKey); undefined when the hash is
 * missing (expired: the driver is offline) or unreadable.
 */
export function positionFromFix(driverId: string, h: Record<string, string>, distanceKm = 0): DriverPosition | undefined {
  const lat = Number(h.lat);
  const lng = Number(h.lng);
  const at = Number(h.at);
  if (h.lat === undefined || h.lng === undefined || !Number.isFinite(lat) || !Number.isFinite(lng) || !Number.isFinite(at)) return undefined;
  return create(DriverPositionSchema, {
    driverId,
    location: { lat, lng },
    headingDeg: Number(h.heading) || 0,
    speedMps: Number(h.speed) || 0,
    accuracyM: Number(h.acc) || 0,
    at: timestampFromMs(at),
    distanceKm,
  });
}

/**
 * GetDriverLocation: the driver's last live fix. Ops and services see every driver, a driver
 * itself, and a customer the driver carrying their active order; for anyone else, and for a
 * driver without a live fix, NOT_FOUND (the answer does not reveal whether the driver exists).
 */
export function getDriverLocation(deps: GetDriverLocationDeps) {
  return async (req: GetDriverLocationRequest, ctx: HandlerContext) => {
    const p = principalOf(ctx);
    const driverId = requireId("driver_id", req.driverId);
    let allowed = p.role === "ops" || p.role === "service" || (p.role === "driver" && p.sub === driverId);
    if (!allowed && p.role === "customer") {
      const a = await deps.activeOrders.lookup(driverId);
      allowed = a !== undefined && a.customerId === p.sub;
    }
    if (!allowed) throw new NotFoundError("driver location not found");
    const position = positionFromFix(driverId, await deps.redis.kv.hgetall(driverFixKey(driverId)));
    if (!position) throw new NotFoundError("driver location not found");
    return { position };
  };
}
