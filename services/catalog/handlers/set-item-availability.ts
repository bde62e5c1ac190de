import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import {
  SetItemAvailabilityResponseSchema,
  type SetItemAvailabilityRequest,
  type SetItemAvailabilityResponse,
} from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { NotFoundError } from "../../platform/errors.js";
import { requireRestaurantOwner } from "./owner.js";
import { itemProto, type HandlerDeps } from "./proto.js";
import { requireId, MAX_ID_CHARS } from "./validate.js";
import { invalid } from "../../platform/errors.js";

export function setItemAvailability(deps: HandlerDeps) {
  return async (req: SetItemAvailabilityRequest, ctx: HandlerContext): Promise<SetItemAvailabilityResponse> => {
    const restaurantId = requireId("restaurant_id", req.restaurantId);
    requireRestaurantOwner(ctx, restaurantId);
    const itemId = requireId("item_id", req.itemId);
    if (req.optionId.length > MAX_ID_CHARS) throw invalid("option_id", `at most ${MAX_ID_CHARS} characters`);
    const res = await deps.store.setItemAvailability(restaurantId, itemId, req.optionId || undefined, req.available);
    if ("missing" in res) {
      throw new NotFoundError(res.missing === "item" ? `item ${itemId} not found in restaurant ${restaurantId}` : `option ${req.optionId} not found in item ${itemId}`);
    }
    deps.logger.info({ restaurantId, itemId, optionId: req.optionId || undefined, available: req.available }, "availability changed");
    return create(SetItemAvailabilityResponseSchema, { item: itemProto(res.item) });
  };
}
