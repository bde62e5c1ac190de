import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { GetMenuResponseSchema, type GetMenuRequest, type GetMenuResponse } from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { NotFoundError } from "../../platform/errors.js";
import { menuProto, restaurantProto, type HandlerDeps } from "./proto.js";
import { requireId } from "./validate.js";

export function getMenu(deps: HandlerDeps) {
  return async (req: GetMenuRequest, ctx: HandlerContext): Promise<GetMenuResponse> => {
    principalOf(ctx);
    const id = requireId("restaurant_id", req.restaurantId);
    const r = await deps.store.getRestaurant(id);
    if (!r) throw new NotFoundError(`restaurant ${id} not found`);
    const cats = await deps.store.getMenu(id);
    return create(GetMenuResponseSchema, { restaurant: restaurantProto(r, deps.now()), menu: menuProto(id, cats) });
  };
}
