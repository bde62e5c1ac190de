import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { toConnectError } from "../platform/errors.js";
import { getMenu } from "./handlers/get-menu.js";
import { getRestaurant } from "./handlers/get-restaurant.js";
import { priceCart } from "./handlers/price-cart.js";
import type { HandlerDeps } from "./handlers/proto.js";
import { searchRestaurants } from "./handlers/search-restaurants.js";
import { setItemAvailability } from "./handlers/set-item-availability.js";
import { setRestaurantOpen } from "./handlers/set-restaurant-open.js";

/**
 * Wraps a unary handler so domain errors become their gRPC codes here, in one place, and
 * anything unexpected becomes INTERNAL with the cause logged (never sent).
 */
function mapped<I, O>(deps: HandlerDeps, rpc: string, h: (req: I, ctx: HandlerContext) => Promise<O>) {
  return async (req: I, ctx: HandlerContext): Promise<O> => {
    try {
      return await h(req, ctx);
    } catch (err) {
      const { error, internal } = toConnectError(err);
      if (internal !== undefined) deps.logger.error({ err: internal, rpc }, "catalog handler failed");
      throw error;
    }
  };
}

/** The CatalogService implementation: one handler per RPC. */
export function catalogRoutes(deps: HandlerDeps): ServiceImpl<typeof CatalogService> {
  return {
    searchRestaurants: mapped(deps, "SearchRestaurants", searchRestaurants(deps)),
    getRestaurant: mapped(deps, "GetRestaurant", getRestaurant(deps)),
    getMenu: mapped(deps, "GetMenu", getMenu(deps)),
    setItemAvailability: mapped(deps, "SetItemAvailability", setItemAvailability(deps)),
    setRestaurantOpen: mapped(deps, "SetRestaurantOpen", setRestaurantOpen(deps)),
    priceCart: mapped(deps, "PriceCart", priceCart(deps)),
  };
}
