import type { HandlerContext } from "@connectrpc/connect";
import { VehicleType } from "../../../gen/dabba/dispatch/v1/dispatch_pb.js";
import type { GoOnlineRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { invalid } from "../../platform/errors.js";
import { VEHICLES } from "../engine.js";
import type { DispatchHandlerDeps } from "./common.js";

/** GoOnline: starts the calling driver's shift in a configured city. Driver role. */
export function goOnline(deps: DispatchHandlerDeps) {
  return async (req: GoOnlineRequest, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    const city = req.city.trim().toLowerCase();
    if (city === "") throw invalid("city", "is required");
    if (!deps.config.location.cities.some((c) => c.name === city)) {
      throw invalid("city", `unknown city "${req.city.slice(0, 64)}" (configured: ${deps.config.location.cities.map((c) => c.name).join(", ")})`);
    }
    const vehicle = VEHICLES[req.vehicleType as Exclude<VehicleType, VehicleType.UNSPECIFIED>];
    if (!vehicle) throw invalid("vehicle_type", "is required (BICYCLE, SCOOTER or CAR)");
    await deps.engine.goOnline(p.sub, city, vehicle);
    return { online: true };
  };
}
