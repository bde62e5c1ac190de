import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import {
  SetRestaurantOpenResponseSchema,
  type SetRestaurantOpenRequest,
  type SetRestaurantOpenResponse,
} from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { NotFoundError } from "../../platform/errors.js";
import { requireRestaurantOwner } from "./owner.js";
import { restaurantProto, type HandlerDeps } from "./proto.js";
import { requireId } from "./validate.js";

export function setRestaurantOpen(deps: HandlerDeps) {
  return async (req: SetRestaurantOpenRequest, ctx: HandlerContext): Promise<SetRestaurantOpenResponse> => {
    const restaurantId = requireId("restaurant_id", req.restaurantId);
    requireRestaurantOwner(ctx, restaurantId);
    const r = await deps.store.setRestaurantOpen(restaurantId, req.isOpen);
    if (!r) throw new NotFoundError(`restaurant ${restaurantId} not found`);
    deps.logger.info({ restaurantId, isOpen: req.isOpen }, "restaurant switch changed");
    return create(SetRestaurantOpenResponseSchema, { restaurant: restaurantProto(r, deps.now()) });
  };
}
