import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { DriverPositionSchema, type DriverPosition } from "../../../gen/dabba/location/v1/location_pb.js";
import type { GetDriverLocationRequest } from "../../../gen/dabba/location/v1/location_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { NotFoundError, requireId } from "../../platform/errors.js";
import type { RedisPorts } from "../../platform/redis.js";
import { driverFixKey, readFixHash } from "../keys.js";
import type { ActiveOrders } from "../types.js";

export interface GetDriverLocationDeps {
  redis: RedisPorts;
  activeOrders: ActiveOrders;
}

/**
 * The DriverPosition of a driver-fix hash (keys.ts driverFixKey); undefined when the hash is
 * missing (expired: the driver is offline) or unreadable.
 */
export function positionFromFix(driverId: string, h: Record<string, string>, distanceKm = 0): DriverPosition | undefined {
  const f = readFixHash(h);
  if (!f) return undefined;
  return create(DriverPositionSchema, {
    driverId,
    location: { lat: f.lat, lng: f.lng },
    headingDeg: f.headingDeg,
    speedMps: f.speedMps,
    accuracyM: f.accuracyM,
    at: timestampFromMs(f.atMs),
    distanceKm,
  });
}

/**
 * GetDriverLocation: the driver's last live fix. Ops and services see every driver, a driver
 * itself, and a customer the driver carrying one of their active orders; for anyone else, and for a
 * driver without a live fix, NOT_FOUND (the answer does not reveal whether the driver exists).
 */
export function getDriverLocation(deps: GetDriverLocationDeps) {
  return async (req: GetDriverLocationRequest, ctx: HandlerContext) => {
    const p = principalOf(ctx);
    const driverId = requireId("driver_id", req.driverId);
    let allowed = p.role === "ops" || p.role === "service" || (p.role === "driver" && p.sub === driverId);
    if (!allowed && p.role === "customer") {
      allowed = (await deps.activeOrders.lookup(driverId)).some((a) => a.customerId === p.sub);
    }
    if (!allowed) throw new NotFoundError("driver location not found");
    const position = positionFromFix(driverId, await deps.redis.kv.hgetall(driverFixKey(driverId)));
    if (!position) throw new NotFoundError("driver location not found");
    return { position };
  };
}
