import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { sql } from "kysely";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import {
  CartLineSchema,
  CatalogService,
  PriceCartRequestSchema,
  SearchRestaurantsRequestSchema,
  type SearchRestaurantsRequest,
} from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { LatLngSchema } from "../../gen/dabba/common/v1/common_pb.js";
import { createCatalogService, DEMO_RESTAURANTS } from "../../services/catalog/index.js";
import { rankScore, searchText, type Hours, type ItemInfo } from "../../services/catalog/domain.js";
import { DEMO_CITY, seedCity } from "../../services/catalog/seed.js";
import { createCatalogStore, type NewRestaurant } from "../../services/catalog/store.js";
import { authInterceptor, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { defaultEtaConfig, testConfig } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis } from "../../services/platform/redis.js";
import { requireReal } from "../helpers/backends.js";
import { createRunDatabase } from "../helpers/run-database.js";

// Fixture town far from the seeded demo city, so ranking and filter checks see only these.
const P = { lat: 13.5, lng: 78.5 };
const KM_LAT = 1 / 111.32;
const north = (km: number) => ({ lat: P.lat + km * KM_LAT, lng: P.lng });
// 2026-11-25 is a Wednesday; 13:00 IST.
const NOW = new Date(Date.UTC(2026, 10, 25, 13, 0) - 330 * 60_000);
const ALL_DAY: Hours[] = [0, 1, 2, 3, 4, 5, 6].map((d) => ({ dayOfWeek: d, openMinute: 0, closeMinute: 1440 }));
const DINNER: Hours[] = [0, 1, 2, 3, 4, 5, 6].map((d) => ({ dayOfWeek: d, openMinute: 19 * 60, closeMinute: 23 * 60 }));

function fixture(id: string, name: string, cuisines: string[], at: { lat: number; lng: number }, over: Partial<NewRestaurant> = {}, items: ItemInfo[] = []): NewRestaurant {
  const menu = items.length > 0 ? items : [simpleItem(`${id}-i0`, id, "House Special", 500)];
  return {
    id,
    name,
    description: "",
    lat: at.lat,
    lng: at.lng,
    address: "1 Test Street",
    cuisines,
    rating: 4,
    ratingCount: 100,
    priceLevel: 2,
    hours: ALL_DAY,
    isOpen: true,
    deliveryRadiusKm: 5,
    avgPrepMinutes: 20,
    popularity: 0.5,
    currency: "USD",
    city: "testtown",
    utcOffsetMinutes: 330,
    categories: [{ id: `${id}-c0`, name: "Menu", items: menu.map((i) => ({ ...i, categoryId: `${id}-c0` })) }],
    searchText: searchText(name, cuisines, menu.map((i) => i.name)),
    ...over,
  };
}
function simpleItem(id: string, restaurantId: string, name: string, priceMinor: number, over: Partial<ItemInfo> = {}): ItemInfo {
  return { id, restaurantId, categoryId: "", name, description: "", priceMinor, currency: "USD", available: true, groups: [], ...over };
}

const napoliItems: ItemInfo[] = [
  simpleItem("np-pizza", "napoli", "Margherita Pizza", 1000, {
    groups: [
      { id: "np-size", name: "Size", minChoices: 1, maxChoices: 1, options: [{ id: "np-reg", name: "Regular", priceDeltaMinor: 0, available: true }, { id: "np-lg", name: "Large", priceDeltaMinor: 300, available: true }] },
      {
        id: "np-extra",
        name: "Extras",
        minChoices: 0,
        maxChoices: 2,
        options: [
          { id: "np-cheese", name: "Extra cheese", priceDeltaMinor: 99, available: true },
          { id: "np-olive", name: "Olives", priceDeltaMinor: 49, available: true },
          { id: "np-truffle", name: "Truffle", priceDeltaMinor: 500, available: false },
        ],
      },
    ],
  }),
  simpleItem("np-coke", "napoli", "Coke", 150),
  simpleItem("np-tiramisu", "napoli", "Tiramisu", 450, { available: false }),
];

const FIXTURES: NewRestaurant[] = [
  fixture("biryani-house", "Biryani House", ["biryani", "indian"], north(0.9), { rating: 4.2 }, [simpleItem("bh-biryani", "biryani-house", "Chicken Biryani", 900)]),
  fixture("napoli", "Napoli Pizza Co", ["pizza", "italian"], north(2), { rating: 4.6, deliveryRadiusKm: 6 }, napoliItems),
  fixture("slice", "Slice of Brooklyn", ["pizza"], north(0.5), { rating: 3.9, deliveryRadiusKm: 4 }, [simpleItem("sl-pep", "slice", "Pepperoni Pizza", 1100)]),
  fixture("sakura", "Sakura Sushi", ["sushi", "japanese"], north(3), { rating: 4.8, deliveryRadiusKm: 8, hours: DINNER }, [simpleItem("sk-roll", "sakura", "California Roll", 1300)]),
  fixture("far-tandoor", "Far Tandoor", ["indian"], north(9), { rating: 5, deliveryRadiusKm: 5, popularity: 1 }),
  fixture("closed-burger", "Closed Burger Barn", ["burgers"], north(1.5), { isOpen: false }, [simpleItem("cb-burger", "closed-burger", "Classic Cheeseburger", 800)]),
];

type Backend = "pglite" | "postgres";

for (const backend of ["pglite", "postgres"] as Backend[]) {
  describe(`CatalogService (${backend})`, function () {
    this.timeout(120_000);
    const cfg = testConfig();
    let db: Db;
    let run: { url: string; drop(): Promise<void> } | undefined;
    let client: Client<typeof CatalogService>;
    const tokens: Partial<Record<string, string>> = {};
    const as = (who: string) => ({ headers: { authorization: `Bearer ${tokens[who]}` } });

    before(async function () {
      if (backend === "postgres") {
        await requireReal("postgres", this);
        // A database of our own: the shared `test` database holds the search bench's city in
        // its public schema, which these tests must neither read nor write.
        run = await createRunDatabase("catalog_test");
        db = await openDb({ databaseUrl: run.url, dataDir: "memory://" });
      } else {
        db = await openDb({ dataDir: "memory://" });
      }
      const module = createCatalogService(
        { config: cfg, db, redis: await openRedis({}), logger: createLogger("silent"), peer: () => { throw new Error("no peers"); } },
        { now: () => NOW },
      );
      await db.migrate("catalog", module.migrations);
      const store = createCatalogStore(db);
      await store.insertRestaurants(FIXTURES);
      await seedCity(db, { seed: 3, restaurants: 60, store });
      const verifier = await createVerifier(cfg.auth);
      const transport = createRouterTransport(({ service }) => service(CatalogService, module.impl as any), {
        router: { interceptors: [authInterceptor(verifier)] },
      });
      client = createClient(CatalogService, transport);
      const mint = (role: Role, sub: string, restaurantId?: string) => mintToken(cfg.auth, { role, sub, restaurantId });
      tokens.customer = await mint("customer", "c1");
      tokens.service = await mint("service", "order");
      tokens.ops = await mint("ops", "op1");
      tokens.napoli = await mint("restaurant", "napoli-tablet", "napoli");
      tokens.slice = await mint("restaurant", "slice-tablet", "slice");
    });

    after(async () => {
      await db?.close();
      await run?.drop();
    });

    const search = (fields: Omit<Partial<SearchRestaurantsRequest>, "$typeName" | "$unknown"> = {}, who = "customer") =>
      client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: create(LatLngSchema, P), ...fields }), as(who));
    const ids = (res: { results: { restaurant?: { id: string } }[] }) => res.results.map((r) => r.restaurant!.id);

    async function rejects(p: Promise<unknown>, code: Code, field?: string): Promise<ConnectError> {
      try {
        await p;
      } catch (e) {
        const err = ConnectError.from(e);
        assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
        if (field) assert.ok(err.rawMessage.startsWith(`${field}:`), `message should name ${field}: ${err.rawMessage}`);
        return err;
      }
      assert.fail(`expected ${Code[code]}`);
    }

    describe("SearchRestaurants", () => {
      it("finds Biryani House for the typo 'biriyani'", async () => {
        const res = await search({ query: "biriyani" });
        assert.equal(ids(res)[0], "biryani-house");
      });

      it("finds the pizza places for 'piza' and not the sushi bar", async () => {
        const got = ids(await search({ query: "piza" }));
        assert.ok(got.includes("napoli") && got.includes("slice"), got.join());
        assert.ok(!got.includes("sakura") && !got.includes("biryani-house"));
      });

      it("returns nothing for text that matches no restaurant", async () => {
        assert.deepEqual(ids(await search({ query: "xylophone" })), []);
      });

      it("keeps only restaurants that deliver to the point, whatever the search radius", async () => {
        const wide = ids(await search({ radiusKm: 30 }));
        assert.ok(!wide.includes("far-tandoor"), "9 km away with a 5 km delivery radius");
        assert.ok(wide.includes("sakura"));
        const there = ids(await search({ location: create(LatLngSchema, north(8.5)) }));
        assert.ok(there.includes("far-tandoor"));
      });

      it("limits results to the search radius", async () => {
        const got = ids(await search({ radiusKm: 1 }));
        assert.deepEqual([...got].sort(), ["biryani-house", "slice"]);
      });

      it("filters by cuisine, minimum rating and open now", async () => {
        assert.deepEqual(ids(await search({ cuisines: ["Sushi"] })), ["sakura"]);
        assert.deepEqual([...ids(await search({ minRating: 4.5 }))].sort(), ["napoli", "sakura"]);
        const open = ids(await search({ openNow: true }));
        assert.ok(!open.includes("sakura"), "dinner only, it is 13:00");
        assert.ok(!open.includes("closed-burger"), "switched off");
        assert.ok(open.includes("napoli") && open.includes("slice"));
      });

      it("ranks by the documented blend and reports distance, fee and ETA", async () => {
        const res = await search();
        const scores = res.results.map((r) => r.score);
        assert.deepEqual(scores, [...scores].sort((a, b) => b - a));
        for (const r of res.results) {
          const x = r.restaurant!;
          const expected = rankScore({ distanceKm: r.distanceKm, radiusKm: 10, rating: x.rating, popularity: x.popularity });
          assert.ok(Math.abs(expected - r.score) < 1e-3, `${x.id}: ${r.score} vs ${expected}`);
          assert.equal(r.deliveryFee!.amountMinor, BigInt(Math.round(199 + 50 * r.distanceKm)));
          // No history yet: the configured prep plus the trip, +-defaultHalfWidth, never narrower than the minimum range.
          assert.ok(r.eta!.maxMinutes - r.eta!.minMinutes >= defaultEtaConfig.minRangeMinutes, JSON.stringify(r.eta));
          assert.ok(r.eta!.maxMinutes > x.avgPrepMinutes && r.eta!.minMinutes >= x.avgPrepMinutes - defaultEtaConfig.defaultHalfWidthMinutes, JSON.stringify(r.eta));
        }
        const slice = res.results.find((r) => r.restaurant!.id === "slice")!;
        assert.ok(Math.abs(slice.distanceKm - 0.5) < 0.01, String(slice.distanceKm));
        assert.equal(slice.restaurant!.openNow, true);
        assert.equal(res.results.find((r) => r.restaurant!.id === "sakura")!.restaurant!.openNow, false);
      });

      it("pages without duplicates or gaps, stably", async () => {
        const centre = create(LatLngSchema, { lat: 12.9716, lng: 77.5946 });
        const all = ids(await client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: centre, pageSize: 100 }), as("customer")));
        assert.ok(all.length > 15, `seeded city should give many results, got ${all.length}`);
        const paged: string[] = [];
        let token = "";
        let firstToken = "";
        for (let i = 0; i < 50; i++) {
          const res = await client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: centre, pageSize: 7, pageToken: token }), as("customer"));
          paged.push(...ids(res));
          if (i === 0) firstToken = res.nextPageToken;
          token = res.nextPageToken;
          if (!token) break;
        }
        assert.equal(new Set(paged).size, paged.length, "no duplicates");
        assert.deepEqual(paged, all);
        const again1 = await client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: centre, pageSize: 7, pageToken: firstToken }), as("customer"));
        const again2 = await client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: centre, pageSize: 7, pageToken: firstToken }), as("customer"));
        assert.deepEqual(ids(again1), ids(again2));
        assert.deepEqual(ids(again1), all.slice(7, 14));
      });

      it("gives the same page whether it stops early or scores every candidate", async () => {
        // Geo-only, rating and open-now searches stop once no farther restaurant can reach the
        // page; a cuisine filter naming every cuisine excludes nobody and scores every
        // candidate of the box through the cuisine postings, an independent path.
        const store = createCatalogStore(db);
        const all = (await sql<{ c: string }>`SELECT DISTINCT unnest(cuisines) AS c FROM catalog_restaurants`.execute(db.kysely)).rows.map((r) => r.c);
        const centre = { lat: 12.9716, lng: 77.5946 };
        for (const radiusKm of [1, 2, 10]) {
          for (const [limit, offset] of [[3, 0], [21, 0], [21, 20], [21, 40]]) {
            for (const filter of [{}, { minRating: 3.5 }, { openNow: true }]) {
              const q = { ...centre, radiusKm, textThreshold: 0.5, cuisines: [] as string[], minRating: 0, openNow: false, now: NOW, limit, offset, ...filter };
              const early = await store.search(q);
              const full = await store.search({ ...q, cuisines: all });
              const what = `radius ${radiusKm}, limit ${limit}, offset ${offset}, ${JSON.stringify(filter)}`;
              if (offset === 0) assert.ok(early.length > 0, what);
              assert.deepEqual(early.map((h) => h.restaurant.id), full.map((h) => h.restaurant.id), what);
              assert.deepEqual(early.map((h) => h.score), full.map((h) => h.score), what);
            }
          }
        }
      });

      it("scores text matches as the documented mean of per-word best similarities", async () => {
        const res = await search({ query: "chicken biriyani", pageSize: 50 });
        assert.ok(res.results.length > 0);
        const sims = await sql<{ w: string; term: string; sim: number }>`
          SELECT w, term, word_similarity(w, term)::float8 AS sim FROM unnest(ARRAY['chicken', 'biriyani']) w, catalog_terms`.execute(db.kysely);
        for (const r of res.results) {
          const x = r.restaurant!;
          const terms = new Set((await sql<{ terms: string[] }>`SELECT terms FROM catalog_restaurants WHERE id = ${x.id}`.execute(db.kysely)).rows[0].terms);
          const best = (w: string) => Math.max(0, ...sims.rows.filter((s) => s.w === w && terms.has(s.term) && s.sim >= 0.5).map((s) => s.sim));
          const text = (best("chicken") + best("biriyani")) / 2;
          const expected = rankScore({ distanceKm: r.distanceKm, radiusKm: 10, rating: x.rating, popularity: x.popularity, textSimilarity: text });
          assert.ok(Math.abs(expected - r.score) < 1e-3, `${x.id}: ${r.score} vs ${expected}`);
        }
      });

      it("rejects a page token from another search or a forged one", async () => {
        const first = await search({ pageSize: 2 });
        assert.ok(first.nextPageToken);
        await rejects(search({ pageSize: 2, pageToken: first.nextPageToken, query: "pizza" }), Code.InvalidArgument, "page_token");
        await rejects(search({ pageToken: "not-a-token" }), Code.InvalidArgument, "page_token");
        await rejects(search({ pageToken: Buffer.from(JSON.stringify({ o: -5, h: "x" })).toString("base64url") }), Code.InvalidArgument, "page_token");
      });

      it("validates coordinates, radius, page size and query length", async () => {
        await rejects(client.searchRestaurants(create(SearchRestaurantsRequestSchema, {}), as("customer")), Code.InvalidArgument, "location");
        await rejects(search({ location: create(LatLngSchema, { lat: Number.NaN, lng: 1 }) }), Code.InvalidArgument, "location.lat");
        await rejects(search({ location: create(LatLngSchema, { lat: 1, lng: Number.POSITIVE_INFINITY }) }), Code.InvalidArgument, "location.lng");
        await rejects(search({ location: create(LatLngSchema, { lat: 91, lng: 1 }) }), Code.InvalidArgument, "location.lat");
        await rejects(search({ radiusKm: 51 }), Code.InvalidArgument, "radius_km");
        await rejects(search({ radiusKm: -1 }), Code.InvalidArgument, "radius_km");
        await rejects(search({ pageSize: 101 }), Code.InvalidArgument, "page_size");
        await rejects(search({ query: "a".repeat(101) }), Code.InvalidArgument, "query");
        await rejects(search({ minRating: 6 }), Code.InvalidArgument, "min_rating");
        await rejects(search({ cuisines: ["no spaces allowed"] }), Code.InvalidArgument, "cuisines[0]");
      });

      it("needs a token", async () => {
        await rejects(client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: create(LatLngSchema, P) })), Code.Unauthenticated);
      });
    });

    describe("GetRestaurant and GetMenu", () => {
      it("returns the restaurant and its menu with options", async () => {
        const r = await client.getRestaurant({ restaurantId: "napoli" }, as("customer"));
        assert.equal(r.restaurant!.name, "Napoli Pizza Co");
        assert.equal(r.restaurant!.hours.length, 7);
        const m = await client.getMenu({ restaurantId: "napoli" }, as("customer"));
        const items = m.menu!.categories.flatMap((c) => c.items);
        assert.deepEqual(items.map((i) => i.id), ["np-pizza", "np-coke", "np-tiramisu"]);
        assert.equal(items[0].customizationGroups[0].options[1].priceDelta!.amountMinor, 300n);
        assert.equal(items[2].available, false);
      });

      it("answers NOT_FOUND for an unknown restaurant and INVALID_ARGUMENT for none", async () => {
        await rejects(client.getMenu({ restaurantId: "nope" }, as("customer")), Code.NotFound);
        await rejects(client.getRestaurant({ restaurantId: "nope" }, as("customer")), Code.NotFound);
        await rejects(client.getMenu({ restaurantId: "" }, as("customer")), Code.InvalidArgument, "restaurant_id");
      });
    });

    describe("SetItemAvailability and SetRestaurantOpen", () => {
      it("lets a restaurant change only its own items", async () => {
        await rejects(client.setItemAvailability({ restaurantId: "napoli", itemId: "np-coke", available: false }, as("slice")), Code.PermissionDenied);
        await rejects(client.setItemAvailability({ restaurantId: "napoli", itemId: "np-coke", available: false }, as("customer")), Code.PermissionDenied);
        // A restaurant naming its own id but another restaurant's item finds nothing.
        await rejects(client.setItemAvailability({ restaurantId: "slice", itemId: "np-coke", available: false }, as("slice")), Code.NotFound);
        const menu = await client.getMenu({ restaurantId: "napoli" }, as("customer"));
        assert.equal(menu.menu!.categories[0].items.find((i) => i.id === "np-coke")!.available, true, "nothing written");

        const res = await client.setItemAvailability({ restaurantId: "napoli", itemId: "np-coke", available: false }, as("napoli"));
        assert.equal(res.item!.available, false);
        const back = await client.setItemAvailability({ restaurantId: "napoli", itemId: "np-coke", available: true }, as("ops"));
        assert.equal(back.item!.available, true);
      });

      it("changes one option's availability", async () => {
        const res = await client.setItemAvailability({ restaurantId: "napoli", itemId: "np-pizza", optionId: "np-olive", available: false }, as("napoli"));
        assert.equal(res.item!.customizationGroups[1].options.find((o) => o.id === "np-olive")!.available, false);
        await rejects(client.setItemAvailability({ restaurantId: "napoli", itemId: "np-pizza", optionId: "sl-nope", available: false }, as("napoli")), Code.NotFound);
        await client.setItemAvailability({ restaurantId: "napoli", itemId: "np-pizza", optionId: "np-olive", available: true }, as("napoli"));
      });

      it("switches a restaurant off and out of open-now search, own restaurant only", async () => {
        await rejects(client.setRestaurantOpen({ restaurantId: "slice", isOpen: false }, as("napoli")), Code.PermissionDenied);
        assert.equal((await client.getRestaurant({ restaurantId: "slice" }, as("customer"))).restaurant!.isOpen, true, "nothing written");
        const off = await client.setRestaurantOpen({ restaurantId: "slice", isOpen: false }, as("slice"));
        assert.equal(off.restaurant!.isOpen, false);
        assert.equal(off.restaurant!.openNow, false);
        assert.ok(!ids(await search({ openNow: true })).includes("slice"));
        assert.ok(!ids(await search({ openNow: true, cuisines: ["pizza"] })).includes("slice"), "cuisine postings follow the switch");
        assert.ok(ids(await search({ cuisines: ["pizza"] })).includes("slice"));
        await client.setRestaurantOpen({ restaurantId: "slice", isOpen: true }, as("slice"));
        assert.ok(ids(await search({ openNow: true })).includes("slice"));
        assert.ok(ids(await search({ openNow: true, cuisines: ["pizza"] })).includes("slice"));
        assert.ok(ids(await search({ query: "pepperoni" })).includes("slice"), "term postings survive the update");
        await rejects(client.setRestaurantOpen({ restaurantId: "nope", isOpen: true }, as("ops")), Code.NotFound);
      });
    });

    describe("PriceCart", () => {
      const line = (itemId: string, quantity = 1, optionIds: string[] = [], note = "") => create(CartLineSchema, { itemId, quantity, optionIds, note });
      const cart = (lines: ReturnType<typeof line>[], restaurantId = "napoli", at = north(1.2)) =>
        create(PriceCartRequestSchema, { restaurantId, lines, deliveryLocation: create(LatLngSchema, at) });

      it("prices a cart from catalog prices", async () => {
        const res = await client.priceCart(cart([line("np-pizza", 2, ["np-lg", "np-cheese"], "crispy"), line("np-coke", 3)]), as("service"));
        assert.equal(res.lines[0].unitPrice!.amountMinor, 1399n);
        assert.equal(res.lines[0].lineTotal!.amountMinor, 2798n);
        assert.equal(res.lines[0].options.length, 2);
        assert.equal(res.lines[1].lineTotal!.amountMinor, 450n);
        assert.equal(res.subtotal!.amountMinor, 3248n);
        assert.ok(Math.abs(res.distanceKm - 0.8) < 0.01, String(res.distanceKm));
        assert.equal(res.deliveryFee!.amountMinor, BigInt(Math.round(199 + 50 * res.distanceKm)));
        assert.equal(res.subtotal!.currency, "USD");
        assert.ok(res.eta!.maxMinutes - res.eta!.minMinutes >= 10);
      });

      it("is for services and operators only", async () => {
        await rejects(client.priceCart(cart([line("np-coke")]), as("customer")), Code.PermissionDenied);
        await rejects(client.priceCart(cart([line("np-coke")]), as("napoli")), Code.PermissionDenied);
        await client.priceCart(cart([line("np-coke")]), as("ops"));
      });

      it("answers NOT_FOUND for an unknown restaurant", async () => {
        await rejects(client.priceCart(cart([line("np-coke")], "nope"), as("service")), Code.NotFound);
      });

      it("treats another restaurant's item like an unknown one", async () => {
        await rejects(client.priceCart(cart([line("np-coke"), line("sl-pep")]), as("service")), Code.InvalidArgument, "lines[1].item_id");
        await rejects(client.priceCart(cart([line("nope")]), as("service")), Code.InvalidArgument, "lines[0].item_id");
      });

      it("rejects bad carts naming the field", async () => {
        await rejects(client.priceCart(cart([]), as("service")), Code.InvalidArgument, "lines");
        await rejects(client.priceCart(cart([line("np-coke", 0)]), as("service")), Code.InvalidArgument, "lines[0].quantity");
        await rejects(client.priceCart(cart([line("np-coke", 100)]), as("service")), Code.InvalidArgument, "lines[0].quantity");
        await rejects(client.priceCart(cart(Array.from({ length: 51 }, () => line("np-coke"))), as("service")), Code.InvalidArgument, "lines");
        await rejects(client.priceCart(cart([line("np-pizza")]), as("service")), Code.InvalidArgument, "lines[0].option_ids");
        await rejects(client.priceCart(cart([line("np-pizza", 1, ["np-reg", "np-lg"])]), as("service")), Code.InvalidArgument, "lines[0].option_ids");
        await rejects(client.priceCart(cart([line("np-pizza", 1, ["np-reg", "sk-x"])]), as("service")), Code.InvalidArgument, "lines[0].option_ids[1]");
        await rejects(client.priceCart(cart([line("np-coke", 1, [], "x".repeat(201))]), as("service")), Code.InvalidArgument, "lines[0].note");
        await rejects(client.priceCart(create(PriceCartRequestSchema, { restaurantId: "napoli", lines: [line("np-coke")] }), as("service")), Code.InvalidArgument, "delivery_location");
      });

      it("refuses unavailable items and options, closed restaurants and out-of-range addresses", async () => {
        const err = await rejects(client.priceCart(cart([line("np-coke"), line("np-tiramisu")]), as("service")), Code.FailedPrecondition, "lines[1].item_id");
        assert.match(err.rawMessage, /np-tiramisu/);
        await rejects(client.priceCart(cart([line("np-pizza", 1, ["np-reg", "np-truffle"])]), as("service")), Code.FailedPrecondition, "lines[0].option_ids[1]");
        await rejects(client.priceCart(cart([line("sk-roll")], "sakura", north(3)), as("service")), Code.FailedPrecondition, "restaurant_id");
        await rejects(client.priceCart(cart([line("cb-burger")], "closed-burger", north(1.5)), as("service")), Code.FailedPrecondition, "restaurant_id");
        await rejects(client.priceCart(cart([line("np-coke")], "napoli", north(9)), as("service")), Code.FailedPrecondition, "delivery_location");
      });
    });
  });
}

describe("CatalogService demo seed", function () {
  this.timeout(120_000);

  it("loads the demo city into an empty embedded database and finds restaurants around its centre", async () => {
    const cfg = testConfig({ demoSeed: true });
    const db = await openDb({ dataDir: "memory://" });
    try {
      const module = createCatalogService({ config: cfg, db, redis: await openRedis({}), logger: createLogger("silent"), peer: () => { throw new Error("no peers"); } });
      await db.migrate("catalog", module.migrations);
      await module.start();
      assert.equal(await createCatalogStore(db).countRestaurants(), DEMO_RESTAURANTS);
      await module.start(); // a second start finds the city there and loads nothing more
      assert.equal(await createCatalogStore(db).countRestaurants(), DEMO_RESTAURANTS);

      const verifier = await createVerifier(cfg.auth);
      const transport = createRouterTransport(({ service }) => service(CatalogService, module.impl as any), {
        router: { interceptors: [authInterceptor(verifier)] },
      });
      const client = createClient(CatalogService, transport);
      const token = await mintToken(cfg.auth, { role: "customer", sub: "c1" });
      const res = await client.searchRestaurants(
        create(SearchRestaurantsRequestSchema, { location: create(LatLngSchema, { lat: DEMO_CITY.lat, lng: DEMO_CITY.lng }) }),
        { headers: { authorization: `Bearer ${token}` } },
      );
      assert.equal(res.results.length, 20, "a full first page");
      assert.ok(res.nextPageToken);
      assert.ok(res.results.every((r) => r.distanceKm <= 10));
    } finally {
      await db.close();
    }
  });
});
