import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { LatLngSchema } from "../../../gen/dabba/common/v1/common_pb.js";
import { DriverPositionSchema } from "../../../gen/dabba/location/v1/location_pb.js";
import type { GetLocationHistoryRequest, GetLocationHistoryResponseSchema } from "../../../gen/dabba/location/v1/location_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { invalid, requireId } from "../../platform/errors.js";
import type { LocationHistory } from "../history.js";

export const HISTORY_LIMITS = Object.freeze({
  /** Widest window one call may read (it spans at most 8 day partitions). */
  maxWindowMs: 7 * 86_400_000,
  limitDefault: 1000,
  limitMax: 10_000,
});

// google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_SECONDS = -62_135_596_800n;
const MAX_SECONDS = 253_402_300_799n;


/** A required, valid Timestamp as epoch ms (fractional below a millisecond). */
function requireTime(field: string, ts: Timestamp | undefined): number {
  if (!ts) throw invalid(field, "is required");
  if (ts.seconds < MIN_SECONDS || ts.seconds > MAX_SECONDS || ts.nanos < 0 || ts.nanos > 999_999_999) {
    throw invalid(field, "is not a valid timestamp");
  }
  return Number(ts.seconds) * 1000 + ts.nanos / 1e6;
}

/** GetLocationHistory: a driver's stored trail in [from, to), oldest first. Ops and service. */
export function getLocationHistory(history: LocationHistory) {
  return async (
    req: GetLocationHistoryRequest,
    ctx: HandlerContext,
  ): Promise<MessageInitShape<typeof GetLocationHistoryResponseSchema>> => {
    requireRole(ctx, "ops", "service");
    requireId("driver_id", req.driverId);
    const from = requireTime("from", req.from);
    const to = requireTime("to", req.to);
    if (!(from < to)) throw invalid("to", "must be after from");
    if (to - from > HISTORY_LIMITS.maxWindowMs) throw invalid("to", "must be at most 7 days after from");
    if (req.limit < 0 || req.limit > HISTORY_LIMITS.limitMax) throw invalid("limit", `must be 0 to ${HISTORY_LIMITS.limitMax} (0 means ${HISTORY_LIMITS.limitDefault})`);
    const limit = req.limit || HISTORY_LIMITS.limitDefault;

    // Stored times are whole milliseconds: [from, to) holds the same points as [ceil(from), ceil(to)).
    const fixes = await history.trail(req.driverId, Math.ceil(from), Math.ceil(to), limit);
    return {
      points: fixes.map((f) =>
        create(DriverPositionSchema, {
          driverId: f.driverId,
          location: create(LatLngSchema, { lat: f.lat, lng: f.lng }),
          accuracyM: f.accuracyM,
          speedMps: f.speedMps,
          headingDeg: f.headingDeg,
          at: timestampFromMs(f.deviceTimeMs),
        }),
      ),
    };
  };
}
