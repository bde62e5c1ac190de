import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { GetRestaurantResponseSchema, type GetRestaurantRequest, type GetRestaurantResponse } from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { NotFoundError } from "../../platform/errors.js";
import { restaurantProto, type HandlerDeps } from "./proto.js";
import { requireId } from "./validate.js";

export function getRestaurant(deps: HandlerDeps) {
  return async (req: GetRestaurantRequest, ctx: HandlerContext): Promise<GetRestaurantResponse> => {
    principalOf(ctx);
    const id = requireId("restaurant_id", req.restaurantId);
    const r = await deps.store.getRestaurant(id);
    if (!r) throw new NotFoundError(`restaurant ${id} not found`);
    return create(GetRestaurantResponseSchema, { restaurant: restaurantProto(r, deps.now()) });
  };
}
