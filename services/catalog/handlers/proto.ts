import { create } from "@bufbuild/protobuf";
import {
  AnswerPolicy,
  CustomizationGroupSchema,
  CustomizationOptionSchema,
  MenuCategorySchema,
  MenuItemSchema,
  MenuSchema,
  OpeningHoursSchema,
  RestaurantSchema,
  type Menu,
  type MenuItem,
  type Restaurant,
} from "../../../gen/dabba/catalog/v1/catalog_pb.js";
import { EtaRangeSchema, LatLngSchema, MoneySchema, type EtaRange, type Money } from "../../../gen/dabba/common/v1/common_pb.js";
import type { Config } from "../../platform/config.js";
import type { Logger } from "../../platform/logger.js";
import { isOpenNow, type CategoryInfo, type ItemInfo, type RestaurantInfo } from "../domain.js";
import type { CatalogStore } from "../store.js";
import type { EtaQuote, EtaService } from "../../eta/service.js";

/** What every catalog handler needs. */
export interface HandlerDeps {
  store: CatalogStore;
  config: Config;
  logger: Logger;
  now: () => Date;
  /** Delivery estimates (services/eta). */
  eta: EtaService;
}

export function money(amountMinor: number, currency: string): Money {
  return create(MoneySchema, { amountMinor: BigInt(amountMinor), currency });
}

/** A quote's range in whole minutes from now (a quote has no absolute bounds: it starts when the order is placed). */
export function eta(q: EtaQuote): EtaRange {
  return create(EtaRangeSchema, { minMinutes: q.minMinutes, maxMinutes: q.maxMinutes });
}

/** What the estimate needs of a restaurant. */
export function etaRestaurant(r: RestaurantInfo) {
  return { id: r.id, location: { lat: r.lat, lng: r.lng }, avgPrepMinutes: r.avgPrepMinutes };
}

export function restaurantProto(r: RestaurantInfo, now: Date): Restaurant {
  return create(RestaurantSchema, {
    id: r.id,
    name: r.name,
    description: r.description,
    location: create(LatLngSchema, { lat: r.lat, lng: r.lng }),
    address: r.address,
    cuisines: r.cuisines,
    rating: r.rating,
    ratingCount: r.ratingCount,
    priceLevel: r.priceLevel,
    hours: r.hours.map((h) => create(OpeningHoursSchema, { dayOfWeek: h.dayOfWeek, openMinute: h.openMinute, closeMinute: h.closeMinute })),
    isOpen: r.isOpen,
    openNow: isOpenNow(r, now),
    deliveryRadiusKm: r.deliveryRadiusKm,
    avgPrepMinutes: r.avgPrepMinutes,
    popularity: r.popularity,
    currency: r.currency,
    city: r.city,
    answerPolicy: r.answerPolicy === "auto_confirm" ? AnswerPolicy.AUTO_CONFIRM : r.answerPolicy === "auto_reject" ? AnswerPolicy.AUTO_REJECT : AnswerPolicy.UNSPECIFIED,
    answerTimeoutSeconds: r.answerTimeoutS ?? 0,
  });
}

export function itemProto(it: ItemInfo): MenuItem {
  return create(MenuItemSchema, {
    id: it.id,
    name: it.name,
    description: it.description,
    price: money(it.priceMinor, it.currency),
    available: it.available,
    customizationGroups: it.groups.map((g) =>
      create(CustomizationGroupSchema, {
        id: g.id,
        name: g.name,
        minChoices: g.minChoices,
        maxChoices: g.maxChoices,
        options: g.options.map((o) =>
          create(CustomizationOptionSchema, { id: o.id, name: o.name, priceDelta: money(o.priceDeltaMinor, it.currency), available: o.available }),
        ),
      }),
    ),
  });
}

export function menuProto(restaurantId: string, cats: CategoryInfo[]): Menu {
  return create(MenuSchema, {
    restaurantId,
    categories: cats.map((c) => create(MenuCategorySchema, { id: c.id, name: c.name, items: c.items.map(itemProto) })),
  });
}
