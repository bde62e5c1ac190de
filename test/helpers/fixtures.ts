import type { NewRestaurant } from "../../services/catalog/store.js";

/** A restaurant open around the clock in central Bengaluru, with two dishes and a priced option group. */
export function fixtureRestaurant(id: string, opts: { isOpen?: boolean; lat?: number; lng?: number; city?: string } = {}): NewRestaurant {
  const hours = [0, 1, 2, 3, 4, 5, 6].map((d) => ({ dayOfWeek: d, openMinute: 0, closeMinute: 1440 }));
  return {
    id,
    name: `Dosa Test Kitchen ${id}`,
    description: "fixture",
    lat: opts.lat ?? 12.9716,
    lng: opts.lng ?? 77.5946,
    address: "MG Road 1",
    cuisines: ["indian"],
    rating: 4.5,
    ratingCount: 100,
    priceLevel: 2,
    hours,
    isOpen: opts.isOpen ?? true,
    deliveryRadiusKm: 10,
    avgPrepMinutes: 15,
    popularity: 0.5,
    currency: "USD",
    city: opts.city ?? "bengaluru",
    utcOffsetMinutes: 330,
    searchText: "dosa test kitchen indian",
    categories: [
      {
        id: `${id}-cat`,
        name: "Mains",
        items: [
          { id: `${id}-dosa`, restaurantId: id, categoryId: `${id}-cat`, name: "Masala Dosa", description: "", priceMinor: 450, currency: "USD", available: true, groups: [] },
          {
            id: `${id}-biryani`,
            restaurantId: id,
            categoryId: `${id}-cat`,
            name: "Chicken Biryani",
            description: "",
            priceMinor: 1200,
            currency: "USD",
            available: true,
            groups: [
              {
                id: `${id}-extras`,
                name: "Extras",
                minChoices: 0,
                maxChoices: 2,
                options: [
                  { id: `${id}-raita`, name: "Raita", priceDeltaMinor: 80, available: true },
                  { id: `${id}-egg`, name: "Egg", priceDeltaMinor: 60, available: true },
                ],
              },
            ],
          },
        ],
      },
    ],
  };
}

/** A point about 1.2 km from the fixture restaurant, inside its delivery radius. */
export const NEARBY = { lat: 12.98, lng: 77.6019 };
