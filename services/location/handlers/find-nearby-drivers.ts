import type { HandlerContext } from "@connectrpc/connect";
import type { DriverPosition } from "../../../gen/dabba/location/v1/location_pb.js";
import type { FindNearbyDriversRequest } from "../../../gen/dabba/location/v1/location_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import type { LocationConfig } from "../../platform/config.js";
import { invalid } from "../../platform/errors.js";
import type { Logger } from "../../platform/logger.js";
import type { RedisPorts } from "../../platform/redis.js";
import { cityGeoKey, driverFixKey } from "../keys.js";
import { positionFromFix } from "./get-driver-location.js";

export interface FindNearbyDriversDeps {
  config: LocationConfig;
  redis: RedisPorts;
  logger: Logger;
}

export const NEARBY_LIMITS = Object.freeze({
  defaultRadiusKm: 5,
  maxRadiusKm: 50,
  defaultLimit: 20,
  maxLimit: 200,
});

/** Rounds of widening the geo search when expired drivers were filtered out of a full page. */
const MAX_ROUNDS = 4;

/**
 * FindNearbyDrivers: live drivers in a configured city within radius_km of a point, nearest
 * first. The geo set may still hold drivers whose fix hash expired (they stopped sending):
 * they are filtered out and removed from the set lazily, so stale drivers drop out of matching.
 */
export function findNearbyDrivers(deps: FindNearbyDriversDeps) {
  return async (req: FindNearbyDriversRequest, ctx: HandlerContext) => {
    requireRole(ctx, "ops", "service");
    if (req.city === "") throw invalid("city", "is required");
    const city = deps.config.cities.find((c) => c.name === req.city);
    if (!city) throw invalid("city", `unknown city "${req.city.slice(0, 64)}" (configured: ${deps.config.cities.map((c) => c.name).join(", ")})`);
    const loc = req.location;
    if (!loc) throw invalid("location", "is required");
    if (!(loc.lat >= -85.05112878 && loc.lat <= 85.05112878)) throw invalid("location.lat", "must be a finite number from -85.05 to 85.05");
    if (!(loc.lng >= -180 && loc.lng <= 180)) throw invalid("location.lng", "must be a finite number from -180 to 180");
    const radiusKm = req.radiusKm === 0 ? NEARBY_LIMITS.defaultRadiusKm : req.radiusKm;
    if (!(radiusKm > 0 && radiusKm <= NEARBY_LIMITS.maxRadiusKm)) throw invalid("radius_km", `must be more than 0 and at most ${NEARBY_LIMITS.maxRadiusKm}`);
    if (req.limit < 0 || req.limit > NEARBY_LIMITS.maxLimit) throw invalid("limit", `must be from 0 (meaning ${NEARBY_LIMITS.defaultLimit}) to ${NEARBY_LIMITS.maxLimit}`);
    const limit = req.limit === 0 ? NEARBY_LIMITS.defaultLimit : req.limit;

    const key = cityGeoKey(city.name);
    const drivers: DriverPosition[] = [];
    let count = limit;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const hits = await deps.redis.geo.search(key, { lat: loc.lat, lng: loc.lng, radiusKm, count });
      const fixes = await deps.redis.hgetallMany(hits.map((h) => driverFixKey(h.member)));
      drivers.length = 0;
      let stale = 0;
      for (let i = 0; i < hits.length && drivers.length < limit; i++) {
        const h = hits[i]!;
        const fix = fixes[i]!;
        const pos = fix.city === city.name ? positionFromFix(h.member, fix, h.distanceKm) : undefined;
        if (pos) {
          drivers.push(pos);
          continue;
        }
        stale++;
        // Expired (offline) or moved to another city: drop from this city's set. A driver
        // pinging again is re-added by its next tick.
        deps.redis.geo.remove(key, h.member).catch((err: unknown) => deps.logger.warn({ err }, "could not remove a stale driver from the geo set"));
      }
      if (drivers.length >= limit || hits.length < count || stale === 0) break;
      count = Math.min(count * 2 + stale, limit + 10_000);
    }
    return { drivers };
  };
}
