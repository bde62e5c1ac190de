import { sql, type Kysely, type RawBuilder, type Transaction } from "kysely";
import type { Db } from "../platform/db.js";
import type { CatalogTables, GroupRow, HoursJson, ItemRow, OptionRow, RestaurantRow } from "./db/tables.js";
import {
  EARTH_RADIUS_KM,
  MINUTES_PER_WEEK,
  haversineKm,
  W_DISTANCE,
  W_POPULARITY,
  W_RATING,
  W_TEXT,
  utcWeekMinute,
  weekRanges,
  type CategoryInfo,
  type GroupInfo,
  type Hours,
  type ItemInfo,
  type OptionInfo,
  type AnswerPolicyName,
  type RestaurantInfo,
} from "./domain.js";

export interface SearchQuery {
  lat: number;
  lng: number;
  radiusKm: number;
  /** Normalized text query; undefined or empty for none. */
  query?: string;
  /** Minimum word similarity for the text match (see domain.textThreshold). */
  textThreshold: number;
  cuisines: string[];
  minRating: number;
  openNow: boolean;
  now: Date;
  limit: number;
  offset: number;
}

export interface SearchHit {
  restaurant: RestaurantInfo;
  distanceKm: number;
  score: number;
}

/** A restaurant with its whole menu, for bulk loading (seed, tests). */
export interface NewRestaurant extends RestaurantInfo {
  categories: CategoryInfo[];
  /** Text the restaurant is found by; see domain.searchText. */
  searchText: string;
}

/** What the store answers when an availability change names something that is not there. */
export type AvailabilityResult = { item: ItemInfo } | { missing: "item" | "option" };

/** Catalog persistence. Rows never leave it: everything crosses as domain types. */
export interface CatalogStore {
  search(q: SearchQuery): Promise<SearchHit[]>;
  getRestaurant(id: string): Promise<RestaurantInfo | undefined>;
  /** Categories in display order with items, groups and options; empty for a restaurant without a menu. */
  getMenu(restaurantId: string): Promise<CategoryInfo[]>;
  /** The restaurant and the named items of its menu in one round trip (cart pricing's hot path). */
  getCart(restaurantId: string, itemIds: string[]): Promise<{ restaurant: RestaurantInfo; items: Map<string, ItemInfo> } | undefined>;
  setItemAvailability(restaurantId: string, itemId: string, optionId: string | undefined, available: boolean): Promise<AvailabilityResult>;
  setRestaurantOpen(id: string, isOpen: boolean): Promise<RestaurantInfo | undefined>;
  /** Sets (or, with undefined, clears back to the platform default) the restaurant's answer policy and timeout. */
  setAnswerPolicy(id: string, policy: AnswerPolicyName | undefined, timeoutS: number | undefined): Promise<RestaurantInfo | undefined>;
  countRestaurants(): Promise<number>;
  /** Inserts restaurants with their menus in one transaction, in multi-row statements; returns row counts. */
  insertRestaurants(rs: NewRestaurant[]): Promise<{ restaurants: number; categories: number; items: number; groups: number; options: number }>;
  /** Removes every catalog row (seed --reset, tests). */
  deleteAll(): Promise<void>;
  /** Refreshes planner statistics after a bulk load (the geo and trigram indexes need them to be chosen). */
  analyze(): Promise<void>;
}

type K = Kysely<CatalogTables>;

const EARTH_RADIUS_M = EARTH_RADIUS_KM * 1000;

/** Upper bound of the distance-free part of the score (rating <= 5 and popularity <= 1 by CHECK). */
const MAX_STATIC_SCORE = W_RATING + W_POPULARITY;

/**
 * First reach of a geo-only search, as a fraction of its radius, and how it widens. Measured on
 * the 50,000-restaurant bench city (~25 per km²) over 60 bench points: the k-th best score
 * rules out restaurants beyond 0.26-0.34 of the radius for k = 21 (a first page), 0.32-0.40 for
 * k = 41 and 0.35-0.44 for k = 61 (pages 2 and 3), so the first reach grows as k^0.25.
 */
const FIRST_REACH = 0.35;
const FIRST_PAGE_K = 21;
const REACH_GROWTH = 1.6;

/** Deepest result (offset + limit) served by a narrowed reach; deeper pages score the whole radius. */
const MAX_NARROW_K = 128;

/** Rows per INSERT statement in bulk loads (unnest of column arrays: few parameters, fast to parse). */
const BULK_ROWS = 2000;

const RESTAURANT_COLUMNS = [
  "id",
  "name",
  "description",
  "address",
  "city",
  "utc_offset_minutes",
  "lat",
  "lng",
  "cuisines",
  "rating",
  "rating_count",
  "price_level",
  "hours",
  "is_open",
  "delivery_radius_km",
  "avg_prep_minutes",
  "popularity",
  "currency",
  "answer_policy",
  "answer_timeout_s",
] as const;

export function createCatalogStore(db: Db): CatalogStore {
  const k = db.kysely as unknown as K;

  async function loadItems(trx: K | Transaction<CatalogTables>, itemRows: ItemRow[]): Promise<ItemInfo[]> {
    if (itemRows.length === 0) return [];
    const ids = itemRows.map((r) => r.id);
    const [groups, options] = await Promise.all([
      trx.selectFrom("catalog_groups").selectAll().where("item_id", "in", ids).orderBy("item_id").orderBy("position").execute(),
      trx.selectFrom("catalog_options").selectAll().where("item_id", "in", ids).orderBy("item_id").orderBy("position").execute(),
    ]);
    return assembleItems(itemRows, groups, options);
  }

  return {
    async search(q) {
      const radiusM = q.radiusKm * 1000;
      const point = sql`ll_to_earth(${q.lat}::float8, ${q.lng}::float8)`;
      const words = q.query ? queryWords(q.query) : [];
      // The walk never leaves the box that reaches as far as the widest delivery radius
      // (nobody farther delivers here); the box is also what ends a walk that finds too few.
      const box = sql`earth_box(${point}, LEAST(${radiusM}::float8, (SELECT max(delivery_radius_km) FROM catalog_restaurants) * 1000))`;
      // Straight-line (chord) distance in metres, cube's `<->` (cube_distance): plain C, and the
      // ordering operator of the GiST indexes. Within 50 km chord and arc differ by less than
      // 1e-5 relative; the radius test converts the arc radius to its chord exactly.
      const chordOf = (alias: string) => sql`(${sql.ref(`${alias}.geo`)} <-> ${point})`;
      const delivers = (alias: string) =>
        sql`${chordOf(alias)} <= ${2 * EARTH_RADIUS_M}::float8 * sin(LEAST(${radiusM}::float8, ${sql.ref(`${alias}.delivery_radius_km`)} * 1000) / ${2 * EARTH_RADIUS_M}::float8)`;
      const distanceScore = (chord: RawBuilder<unknown>) => sql`${W_DISTANCE}::float8 * GREATEST(0, 1 - ${chord} / ${radiusM}::float8)`;
      const openNowOf = (alias: string) => {
        const m = utcWeekMinute(q.now);
        const col = (c: string) => sql.ref(`${alias}.${c}`);
        return sql`${col("is_open")} AND ${col("open_week")} @> (((${m}::int + ${col("utc_offset_minutes")}) % ${MINUTES_PER_WEEK} + ${MINUTES_PER_WEEK}) % ${MINUTES_PER_WEEK})`;
      };
      const filtersOf = (alias: string, withCuisines: boolean) => {
        const f: RawBuilder<unknown>[] = [];
        if (withCuisines && q.cuisines.length > 0) f.push(sql`${sql.ref(`${alias}.cuisines`)} && ${q.cuisines}::text[]`);
        if (q.minRating > 0) f.push(sql`${sql.ref(`${alias}.rating`)} >= ${q.minRating}::float8`);
        if (q.openNow) f.push(openNowOf(alias));
        return f;
      };
      /** The page of candidates `c` (id, chord_m, score), with the restaurants' rows, best first. */
      const page = (candidates: RawBuilder<unknown>) => sql<RestaurantRow & { chord_m: number; score: number }>`
        WITH c AS MATERIALIZED (${candidates}),
        top AS (SELECT c.* FROM c ORDER BY c.score DESC, c.id LIMIT ${q.limit} OFFSET ${q.offset})
        SELECT ${sql.join(RESTAURANT_COLUMNS.map((col) => sql.ref(`x.${col}`)))}, top.chord_m, top.score
        FROM top JOIN catalog_restaurants x ON x.id = top.id
        ORDER BY top.score DESC, top.id`;

      let rows: Array<RestaurantRow & { chord_m: number | null; score: number | null }> = [];
      if (words.length > 0) {
        // Text: one statement. Query words -> similar terms (trigram postings, then the exact
        // word_similarity), then the postings of those terms inside the box (one GiST scan per
        // term), then per restaurant: text similarity = mean over query words of the best
        // similarity among its matched terms. Filters, if any, read the restaurant row.
        const perWord = words.map((_, i) => sql`coalesce(max(m.sim) FILTER (WHERE m.w = ${i + 1}::int), 0)`);
        const filters = filtersOf("r", true);
        const matched = sql`
          SELECT p.restaurant_id AS id, min(${chordOf("p")}) AS chord_m, min(p.static_score) AS static_score,
            (${sql.join(perWord, sql` + `)}) / ${words.length}::float8 AS text
          FROM (
            SELECT w.i AS w, t.id, word_similarity(w.word, t.term)::float8 AS sim
            FROM unnest(${words}::text[]) WITH ORDINALITY AS w(word, i)
            CROSS JOIN LATERAL (
              SELECT tg.term_id FROM catalog_term_trigrams tg WHERE tg.trgm = ANY (show_trgm(w.word))
              GROUP BY tg.term_id HAVING count(*) >= ${q.textThreshold}::float8 * cardinality(show_trgm(w.word))
            ) cand
            JOIN catalog_terms t ON t.id = cand.term_id
            WHERE word_similarity(w.word, t.term) >= ${q.textThreshold}::float8
          ) m
          JOIN catalog_restaurant_terms p ON p.term_id = m.id
          WHERE ${box} @> p.geo AND ${delivers("p")}
          GROUP BY p.restaurant_id`;
        rows = (
          await page(sql`
            SELECT b.id, b.chord_m, ${distanceScore(sql`b.chord_m`)} + b.static_score + ${W_TEXT}::float8 * b.text AS score
            FROM (${matched}) b
            ${filters.length > 0 ? sql`JOIN catalog_restaurants r ON r.id = b.id WHERE ${sql.join(filters, sql` AND `)}` : sql``}`).execute(k)
        ).rows;
      } else if (q.cuisines.length > 0) {
        // Cuisine filter: the postings of each requested cuisine inside the box carry rating
        // and hours, so the whole filter is answered from that index. A restaurant listed under
        // two requested cuisines is one candidate.
        const filters = filtersOf("p", false);
        rows = (
          await page(sql`
            SELECT p.restaurant_id AS id, min(${chordOf("p")}) AS chord_m, min(${distanceScore(chordOf("p"))} + p.static_score) AS score
            FROM unnest(${q.cuisines}::text[]) AS cu(tag)
            JOIN catalog_restaurant_cuisines p ON p.cuisine = cu.tag
            WHERE ${sql.join([sql`${box} @> p.geo`, delivers("p"), ...filters], sql` AND `)}
            GROUP BY p.restaurant_id`).execute(k)
        ).rows;
      } else {
        // Geo-only (and rating / open-now): top-k with early termination. Score the eligible
        // restaurants within `reach` of the point (an index-only scan of the box around it);
        // every restaurant farther away scores at most W_DISTANCE * (1 - reach / radius) +
        // MAX_STATIC_SCORE. Once that is below the k-th best score found, the page is exact;
        // otherwise widen the reach. The bound holds with rating / open-now filters too (they
        // only lower the k-th best, so the walk widens more often); measured on the bench city,
        // narrowing still beats scoring the whole box for them (~4 ms against ~10 ms). Pages
        // deeper than MAX_NARROW_K start at the whole radius, which is the full scoring.
        const filters = filtersOf("r", false);
        const topK = q.offset + q.limit;
        const narrow = topK <= MAX_NARROW_K;
        const firstReach = Math.min(1, FIRST_REACH * Math.max(1, topK / FIRST_PAGE_K) ** 0.25) * radiusM;
        for (let reach = narrow ? firstReach : radiusM; ; reach = Math.min(radiusM, reach * REACH_GROWTH)) {
          const full = reach >= radiusM;
          const within = full ? sql`${box} @> r.geo` : sql`earth_box(${point}, ${reach}::float8) @> r.geo AND ${chordOf("r")} <= ${reach}::float8`;
          const found = (
            await sql<RestaurantRow & { kth: number | null; chord_m: number | null; score: number | null }>`
              WITH c AS MATERIALIZED (
                SELECT r.id, ${chordOf("r")} AS chord_m, ${distanceScore(chordOf("r"))} + r.static_score AS score
                FROM catalog_restaurants r
                WHERE ${sql.join([within, delivers("r"), ...filters], sql` AND `)}
              ), s AS (
                SELECT (SELECT c2.score FROM c c2 ORDER BY c2.score DESC, c2.id OFFSET ${topK - 1} LIMIT 1) AS kth
              ), top AS (
                SELECT c.* FROM c ORDER BY c.score DESC, c.id LIMIT ${q.limit} OFFSET ${q.offset}
              )
              SELECT s.kth, ${sql.join(RESTAURANT_COLUMNS.map((col) => sql.ref(`x.${col}`)))}, top.chord_m, top.score
              FROM s LEFT JOIN (top JOIN catalog_restaurants x ON x.id = top.id) ON true
              ORDER BY top.score DESC, top.id`.execute(k)
          ).rows;
          const { kth } = found[0];
          const bound = W_DISTANCE * Math.max(0, 1 - reach / radiusM) + MAX_STATIC_SCORE;
          // The margin keeps float rounding (~1e-16) from ever cutting a row that ties.
          if (full || (kth !== null && bound < Number(kth) - 1e-9)) {
            rows = found.filter((r) => r.id !== null);
            break;
          }
        }
      }
      return rows.map((r) => {
        const restaurant = toRestaurant(r as RestaurantRow);
        // Reported distance: the same haversine PriceCart uses, so search and checkout agree.
        return { restaurant, distanceKm: haversineKm(restaurant, q), score: Number(r.score) };
      });
    },
    async getRestaurant(id) {
      const row = await k.selectFrom("catalog_restaurants").select(RESTAURANT_COLUMNS).where("id", "=", id).executeTakeFirst();
      return row ? toRestaurant(row as RestaurantRow) : undefined;
    },

    async getMenu(restaurantId) {
      const [cats, itemRows] = await Promise.all([
        k.selectFrom("catalog_categories").selectAll().where("restaurant_id", "=", restaurantId).orderBy("position").execute(),
        k.selectFrom("catalog_items").selectAll().where("restaurant_id", "=", restaurantId).orderBy("position").execute(),
      ]);
      const items = await loadItems(k, itemRows);
      const byCat = new Map<string, ItemInfo[]>();
      for (const it of items) {
        const list = byCat.get(it.categoryId) ?? [];
        list.push(it);
        byCat.set(it.categoryId, list);
      }
      return cats.map((c) => ({ id: c.id, name: c.name, items: byCat.get(c.id) ?? [] }));
    },

    async getCart(restaurantId, itemIds) {
      const ids = [...new Set(itemIds)].filter((x) => x);
      // One statement: the restaurant row plus its requested items, their groups and options as JSON.
      const q = sql<RestaurantRow & { cart_items: ItemRow[]; cart_groups: GroupRow[]; cart_options: OptionRow[] }>`
        select ${sql.join(RESTAURANT_COLUMNS.map((c) => sql.ref(`r.${c}`)))},
          coalesce((select json_agg(i) from catalog_items i where i.restaurant_id = r.id and i.id = any(${ids}::text[])), '[]') as cart_items,
          coalesce((select json_agg(g order by g.item_id, g.position) from catalog_groups g
                    join catalog_items i on i.id = g.item_id
                    where i.restaurant_id = r.id and i.id = any(${ids}::text[])), '[]') as cart_groups,
          coalesce((select json_agg(o order by o.item_id, o.position) from catalog_options o
                    join catalog_items i on i.id = o.item_id
                    where i.restaurant_id = r.id and i.id = any(${ids}::text[])), '[]') as cart_options
        from catalog_restaurants r where r.id = ${restaurantId}`.compile(k);
      // Fixed text (the ids are one array parameter): a named prepared statement on Postgres, planned once per connection.
      const [row] = await db.prepared<RestaurantRow & { cart_items: ItemRow[]; cart_groups: GroupRow[]; cart_options: OptionRow[] }>("catalog_get_cart", q);
      if (!row) return undefined;
      const items = assembleItems(row.cart_items, row.cart_groups, row.cart_options);
      return { restaurant: toRestaurant(row), items: new Map(items.map((i) => [i.id, i])) };
    },

    async setItemAvailability(restaurantId, itemId, optionId, available) {
      return k.transaction().execute(async (trx): Promise<AvailabilityResult> => {
        const item = await trx.selectFrom("catalog_items").selectAll().where("id", "=", itemId).where("restaurant_id", "=", restaurantId).executeTakeFirst();
        if (!item) return { missing: "item" };
        if (optionId) {
          const res = await trx.updateTable("catalog_options").set({ available }).where("id", "=", optionId).where("item_id", "=", itemId).executeTakeFirst();
          if (Number(res.numUpdatedRows) === 0) return { missing: "option" };
          const [info] = await loadItems(trx, [item]);
          return { item: info };
        }
        const updated = await trx.updateTable("catalog_items").set({ available }).where("id", "=", itemId).returningAll().executeTakeFirstOrThrow();
        const [info] = await loadItems(trx, [updated]);
        return { item: info };
      });
    },

    async setAnswerPolicy(id, policy, timeoutS) {
      const row = await k
        .updateTable("catalog_restaurants")
        .set({ answer_policy: policy ?? null, answer_timeout_s: timeoutS ?? null, updated_at: sql`now()` })
        .where("id", "=", id)
        .returning(RESTAURANT_COLUMNS)
        .executeTakeFirst();
      return row ? toRestaurant(row as RestaurantRow) : undefined;
    },
    async setRestaurantOpen(id, isOpen) {
      const row = await k
        .updateTable("catalog_restaurants")
        .set({ is_open: isOpen, updated_at: sql`now()` })
        .where("id", "=", id)
        .returning(RESTAURANT_COLUMNS)
        .executeTakeFirst();
      return row ? toRestaurant(row as RestaurantRow) : undefined;
    },

    async countRestaurants() {
      const row = await k.selectFrom("catalog_restaurants").select(sql<string | number>`count(*)`.as("n")).executeTakeFirstOrThrow();
      return Number(row.n);
    },

    async insertRestaurants(rs) {
      const counts = { restaurants: rs.length, categories: 0, items: 0, groups: 0, options: 0 };
      if (rs.length === 0) return counts;
      const cats: Array<[string, string, string, number]> = [];
      const items: Array<[string, string, string, string, string, number, string, boolean, number]> = [];
      const groups: Array<[string, string, string, number, number, number]> = [];
      const options: Array<[string, string, string, string, number, boolean, number]> = [];
      for (const r of rs) {
        r.categories.forEach((c, ci) => {
          cats.push([c.id, r.id, c.name, ci]);
          c.items.forEach((it, ii) => {
            items.push([it.id, r.id, c.id, it.name, it.description, it.priceMinor, it.currency, it.available, ci * 1000 + ii]);
            it.groups.forEach((g, gi) => {
              groups.push([g.id, it.id, g.name, g.minChoices, g.maxChoices, gi]);
              g.options.forEach((o, oi) => options.push([o.id, g.id, it.id, o.name, o.priceDeltaMinor, o.available, oi]));
            });
          });
        });
      }
      counts.categories = cats.length;
      counts.items = items.length;
      counts.groups = groups.length;
      counts.options = options.length;
      await k.transaction().execute(async (trx) => {
        for (const chunk of chunks(rs, BULK_ROWS)) {
          const col = <T>(f: (r: NewRestaurant) => T) => chunk.map(f);
          // Terms first: the restaurants' term_ids refer to them.
          const newTerms = [...new Set(chunk.flatMap((r) => r.searchText.split(" ").filter((t) => t)))].sort();
          await sql`INSERT INTO catalog_terms (term) SELECT unnest(${newTerms}::text[]) ON CONFLICT DO NOTHING`.execute(trx);
          await sql`
            INSERT INTO catalog_restaurants (id, name, description, address, city, utc_offset_minutes, lat, lng, cuisines, rating,
              rating_count, price_level, hours, open_week, is_open, geo, delivery_radius_km, avg_prep_minutes, popularity, currency, terms, term_ids)
            SELECT u.id, u.name, u.description, u.address, u.city, u.utc_offset_minutes, u.lat, u.lng,
              string_to_array(u.cuisines, ','), u.rating, u.rating_count, u.price_level, u.hours::jsonb, u.open_week::int4multirange,
              u.is_open, ll_to_earth(u.lat, u.lng), u.delivery_radius_km, u.avg_prep_minutes, u.popularity, u.currency, string_to_array(u.terms, ' '),
              ARRAY(SELECT t.id FROM catalog_terms t WHERE t.term = ANY (string_to_array(u.terms, ' ')) ORDER BY t.id)
            FROM unnest(${col((r) => r.id)}::text[], ${col((r) => r.name)}::text[], ${col((r) => r.description)}::text[],
              ${col((r) => r.address)}::text[], ${col((r) => r.city)}::text[], ${col((r) => r.utcOffsetMinutes)}::int[],
              ${col((r) => r.lat)}::float8[], ${col((r) => r.lng)}::float8[], ${col((r) => r.cuisines.join(","))}::text[],
              ${col((r) => r.rating)}::float8[], ${col((r) => r.ratingCount)}::int[], ${col((r) => r.priceLevel)}::int[],
              ${col((r) => JSON.stringify(hoursToJson(r.hours)))}::text[], ${col((r) => multirange(weekRanges(r.hours)))}::text[],
              ${col((r) => r.isOpen)}::bool[], ${col((r) => r.deliveryRadiusKm)}::float8[], ${col((r) => r.avgPrepMinutes)}::int[],
              ${col((r) => r.popularity)}::float8[], ${col((r) => r.currency)}::text[], ${col((r) => r.searchText)}::text[])
              AS u(id, name, description, address, city, utc_offset_minutes, lat, lng, cuisines, rating, rating_count, price_level,
                   hours, open_week, is_open, delivery_radius_km, avg_prep_minutes, popularity, currency, terms)`.execute(trx);
        }
        for (const chunk of chunks(cats, BULK_ROWS)) {
          await sql`INSERT INTO catalog_categories (id, restaurant_id, name, position)
            SELECT * FROM unnest(${cols(chunk, 0)}::text[], ${cols(chunk, 1)}::text[], ${cols(chunk, 2)}::text[], ${cols(chunk, 3)}::int[])`.execute(trx);
        }
        for (const chunk of chunks(items, BULK_ROWS)) {
          await sql`INSERT INTO catalog_items (id, restaurant_id, category_id, name, description, price_minor, currency, available, position)
            SELECT * FROM unnest(${cols(chunk, 0)}::text[], ${cols(chunk, 1)}::text[], ${cols(chunk, 2)}::text[], ${cols(chunk, 3)}::text[],
              ${cols(chunk, 4)}::text[], ${cols(chunk, 5)}::int8[], ${cols(chunk, 6)}::text[], ${cols(chunk, 7)}::bool[], ${cols(chunk, 8)}::int[])`.execute(trx);
        }
        for (const chunk of chunks(groups, BULK_ROWS)) {
          await sql`INSERT INTO catalog_groups (id, item_id, name, min_choices, max_choices, position)
            SELECT * FROM unnest(${cols(chunk, 0)}::text[], ${cols(chunk, 1)}::text[], ${cols(chunk, 2)}::text[], ${cols(chunk, 3)}::int[],
              ${cols(chunk, 4)}::int[], ${cols(chunk, 5)}::int[])`.execute(trx);
        }
        for (const chunk of chunks(options, BULK_ROWS)) {
          await sql`INSERT INTO catalog_options (id, group_id, item_id, name, price_delta_minor, available, position)
            SELECT * FROM unnest(${cols(chunk, 0)}::text[], ${cols(chunk, 1)}::text[], ${cols(chunk, 2)}::text[], ${cols(chunk, 3)}::text[],
              ${cols(chunk, 4)}::int8[], ${cols(chunk, 5)}::bool[], ${cols(chunk, 6)}::int[])`.execute(trx);
        }
      });
      return counts;
    },

    async analyze() {
      // VACUUM also sets the visibility map, which the index-only geo scan needs.
      await sql`VACUUM ANALYZE catalog_restaurants, catalog_restaurant_terms, catalog_restaurant_cuisines, catalog_term_trigrams`.execute(k);
      await sql`ANALYZE catalog_terms, catalog_categories, catalog_items, catalog_groups, catalog_options`.execute(k);
    },

    async deleteAll() {
      await sql`TRUNCATE catalog_restaurant_terms, catalog_restaurant_cuisines, catalog_term_trigrams, catalog_terms, catalog_options, catalog_groups, catalog_items, catalog_categories, catalog_restaurants`.execute(k);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Mappers (rows <-> domain).

function toRestaurant(r: RestaurantRow): RestaurantInfo {
  const hoursRaw = (typeof r.hours === "string" ? JSON.parse(r.hours) : r.hours) as HoursJson[];
  return {
    id: r.id,
    name: r.name,
    description: r.description,
    address: r.address,
    city: r.city,
    utcOffsetMinutes: r.utc_offset_minutes,
    lat: Number(r.lat),
    lng: Number(r.lng),
    cuisines: parseTextArray(r.cuisines),
    rating: Number(r.rating),
    ratingCount: r.rating_count,
    priceLevel: r.price_level,
    hours: hoursRaw.map((h) => ({ dayOfWeek: h.d, openMinute: h.o, closeMinute: h.c })),
    isOpen: r.is_open,
    deliveryRadiusKm: Number(r.delivery_radius_km),
    avgPrepMinutes: r.avg_prep_minutes,
    popularity: Number(r.popularity),
    currency: r.currency,
    ...(r.answer_policy ? { answerPolicy: r.answer_policy } : {}),
    ...(r.answer_timeout_s ? { answerTimeoutS: r.answer_timeout_s } : {}),
  };
}

function hoursToJson(hours: Hours[]): HoursJson[] {
  return hours.map((h) => ({ d: h.dayOfWeek, o: h.openMinute, c: h.closeMinute }));
}

function assembleItems(itemRows: ItemRow[], groupRows: GroupRow[], optionRows: OptionRow[]): ItemInfo[] {
  const optsByGroup = new Map<string, OptionInfo[]>();
  for (const o of optionRows) {
    const list = optsByGroup.get(o.group_id) ?? [];
    list.push({ id: o.id, name: o.name, priceDeltaMinor: Number(o.price_delta_minor), available: o.available });
    optsByGroup.set(o.group_id, list);
  }
  const groupsByItem = new Map<string, GroupInfo[]>();
  for (const g of groupRows) {
    const list = groupsByItem.get(g.item_id) ?? [];
    list.push({ id: g.id, name: g.name, minChoices: g.min_choices, maxChoices: g.max_choices, options: optsByGroup.get(g.id) ?? [] });
    groupsByItem.set(g.item_id, list);
  }
  return itemRows.map((r) => ({
    id: r.id,
    restaurantId: r.restaurant_id,
    categoryId: r.category_id,
    name: r.name,
    description: r.description,
    priceMinor: Number(r.price_minor),
    currency: r.currency,
    available: r.available,
    groups: groupsByItem.get(r.id) ?? [],
  }));
}

/** text[] arrives as a JS array from pg and PGlite; tolerate the literal form too. */
function parseTextArray(v: unknown): string[] {
  if (Array.isArray(v)) return v as string[];
  if (typeof v === "string") return v.replace(/^\{|\}$/g, "").split(",").filter((s) => s !== "").map((s) => s.replace(/^"|"$/g, ""));
  return [];
}

function multirange(ranges: Array<[number, number]>): string {
  return `{${ranges.map(([s, e]) => `[${s},${e})`).join(",")}}`;
}

/** Distinct words of a normalized query (at most 8; longer queries add little). */
function queryWords(q: string): string[] {
  return [...new Set(q.split(/[^\p{L}\p{N}]+/u).filter((w) => w))].slice(0, 8);
}

function* chunks<T>(xs: T[], n: number): Generator<T[]> {
  for (let i = 0; i < xs.length; i += n) yield xs.slice(i, i + n);
}

function cols<T extends unknown[]>(rows: T[], i: number): unknown[] {
  return rows.map((r) => r[i]);
}
