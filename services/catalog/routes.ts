import type { ServiceImpl } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { withMappedErrors } from "../platform/errors.js";
import { getMenu } from "./handlers/get-menu.js";
import { getRestaurant } from "./handlers/get-restaurant.js";
import { priceCart } from "./handlers/price-cart.js";
import type { HandlerDeps } from "./handlers/proto.js";
import { setAnswerPolicy } from "./handlers/set-answer-policy.js";
import { searchRestaurants } from "./handlers/search-restaurants.js";
import { setItemAvailability } from "./handlers/set-item-availability.js";
import { setRestaurantOpen } from "./handlers/set-restaurant-open.js";

/** The CatalogService implementation: one handler per RPC. */
export function catalogRoutes(deps: HandlerDeps): ServiceImpl<typeof CatalogService> {
  return withMappedErrors(CatalogService, {
    searchRestaurants: searchRestaurants(deps),
    getRestaurant: getRestaurant(deps),
    getMenu: getMenu(deps),
    setItemAvailability: setItemAvailability(deps),
    setRestaurantOpen: setRestaurantOpen(deps),
    setAnswerPolicy: setAnswerPolicy(deps),
    priceCart: priceCart(deps),
  }, deps.logger);
}
