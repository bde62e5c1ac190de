import type { HandlerContext } from "@connectrpc/connect";
import { requireRole } from "../../platform/auth.js";
import type { DispatchHandlerDeps } from "./common.js";

/** GoOffline: ends the calling driver's shift; open offers go to the next driver at once. Driver role. */
export function goOffline(deps: DispatchHandlerDeps) {
  return async (_req: unknown, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    await deps.engine.goOffline(p.sub);
    return { online: false };
  };
}
