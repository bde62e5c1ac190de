import type { HandlerContext } from "@connectrpc/connect";
import type { ReportLocationsRequest, ReportLocationsResponse } from "../../../gen/dabba/location/v1/location_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ReportLocationsResponseSchema } from "../../../gen/dabba/location/v1/location_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import type { LocationConfig } from "../../platform/config.js";
import type { Logger } from "../../platform/logger.js";
import { PingCounts, validatePing } from "../domain.js";
import type { Ingest } from "../ingest.js";
import type { AcceptedFix } from "../types.js";
import type { TickWriter } from "../writer.js";

export interface ReportLocationsDeps {
  config: LocationConfig;
  logger: Logger;
  ingest: Ingest;
  writer: TickWriter;
}

/**
 * ReportLocations: a driver's client stream of pings. The driver is the token's subject. Every
 * ping is validated; a bad one is counted and dropped and the stream goes on. Accepted fixes go
 * to the tick writer, and the next message is read only once they are written: HTTP/2 flow
 * control then holds a client that sends faster than Redis takes the writes.
 */
export function reportLocations(deps: ReportLocationsDeps) {
  const cfg = deps.config;
  return async (requests: AsyncIterable<ReportLocationsRequest>, ctx: HandlerContext): Promise<MessageInitShape<typeof ReportLocationsResponseSchema>> => {
    const driverId = requireRole(ctx, "driver").sub;
    const counts = new PingCounts();
    const stream = await deps.ingest.open(driverId);
    let spoofed = 0;
    try {
      for await (const req of requests) {
        const pings = req.pings;
        const n = Math.min(pings.length, cfg.maxPingsPerMessage);
        if (pings.length > n) counts.reject("batch_too_large", pings.length - n);
        let accepted: AcceptedFix[] | undefined;
        const now = Date.now();
        for (let i = 0; i < n; i++) {
          const r = validatePing(stream, pings[i]!, now, cfg);
          if (typeof r === "string") {
            counts.reject(r);
            if (r === "impossible_speed") {
              deps.ingest.suspectSpoof(driverId);
              // One line per stream when it starts, then a summary at the end: a spoofing
              // device must not flood the log.
              if (spoofed++ === 0) deps.logger.warn({ driverId, sequence: String(pings[i]!.sequence) }, "impossible speed: suspected GPS spoofing");
            }
            continue;
          }
          counts.accepted++;
          (accepted ??= []).push(r);
        }
        if (accepted) await deps.writer.submit(accepted);
      }
    } finally {
      deps.ingest.close(stream);
      if (spoofed > 1) deps.logger.warn({ driverId, impossibleSpeed: spoofed }, "stream ended with suspected GPS spoofing");
    }
    return {
      accepted: BigInt(counts.accepted),
      rejected: BigInt(counts.rejected),
      rejectedByReason: counts.reasons(),
    } satisfies Partial<ReportLocationsResponse>;
  };
}
