import type { ColumnType, Generated, Insertable, Selectable, Updateable } from "kysely";

/** catalog_restaurants: one row per restaurant. */
export interface RestaurantsTable {
  id: string;
  name: string;
  description: string;
  address: string;
  city: string;
  /** Fixed offset of the city's local time from UTC, minutes (see domain.ts). */
  utc_offset_minutes: number;
  lat: number;
  lng: number;
  /** ll_to_earth(lat, lng), written by the store; never read back. */
  geo: string;
  cuisines: string[];
  rating: number;
  rating_count: number;
  price_level: number;
  /** Opening intervals as JSON [{d, o, c}] (day, open minute, close minute) for display. */
  hours: ColumnType<HoursJson[], string, string>;
  /** The same hours as local week-minute ranges (int4multirange literal) for the open-now filter. */
  open_week: string;
  is_open: boolean;
  delivery_radius_km: number;
  avg_prep_minutes: number;
  popularity: number;
  currency: string;
  /** What happens to an unanswered order; null = the platform default (config orders.answerPolicy). */
  answer_policy: ColumnType<"auto_confirm" | "auto_reject" | null, "auto_confirm" | "auto_reject" | null | undefined, "auto_confirm" | "auto_reject" | null>;
  /** Seconds an order waits for the restaurant; null = the platform default. */
  answer_timeout_s: ColumnType<number | null, number | null | undefined, number | null>;
  /** Distinct lower-case words of name, cuisines and dish names; array-GIN indexed. */
  terms: string[];
  /** Ids (catalog_terms.id) of the same words, for the index-only search walk. */
  term_ids: ColumnType<number[], number[] | undefined, number[]>;
  /** Generated: W_RATING * rating / 5 + W_POPULARITY * popularity (the ranking's distance-free part). */
  static_score: ColumnType<number, never, never>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

export interface HoursJson {
  d: number;
  o: number;
  c: number;
}

/** catalog_terms: every distinct word any restaurant is found by; trigram indexed (and catalog_term_trigrams). */
export interface TermsTable {
  term: string;
  id: Generated<number>;
}

/** catalog_term_trigrams: the pg_trgm trigrams of each term (query word -> candidate terms); trigger-maintained. */
export interface TermTrigramsTable {
  trgm: string;
  term_id: number;
}

/** catalog_restaurant_terms: one posting per (term, restaurant) with what ranking reads; trigger-maintained. */
export interface RestaurantTermsTable {
  term_id: number;
  restaurant_id: string;
  geo: string;
  delivery_radius_km: number;
  static_score: number;
}

/** catalog_restaurant_cuisines: one posting per (cuisine tag, restaurant) with what ranking and filters read; trigger-maintained. */
export interface RestaurantCuisinesTable {
  cuisine: string;
  restaurant_id: string;
  geo: string;
  delivery_radius_km: number;
  static_score: number;
  rating: number;
  is_open: boolean;
  open_week: string;
  utc_offset_minutes: number;
}

/** catalog_categories: menu sections. */
export interface CategoriesTable {
  id: string;
  restaurant_id: string;
  name: string;
  position: number;
}

/** catalog_items: dishes. price_minor is int8 (a JS number for any realistic price). */
export interface ItemsTable {
  id: string;
  restaurant_id: string;
  category_id: string;
  name: string;
  description: string;
  price_minor: ColumnType<number, number, number>;
  currency: string;
  available: boolean;
  position: number;
}

/** catalog_groups: customization groups of an item. */
export interface GroupsTable {
  id: string;
  item_id: string;
  name: string;
  min_choices: number;
  max_choices: number;
  position: number;
}

/** catalog_options: options of a group. */
export interface OptionsTable {
  id: string;
  group_id: string;
  item_id: string;
  name: string;
  price_delta_minor: ColumnType<number, number, number>;
  available: boolean;
  position: number;
}

export interface CatalogTables {
  catalog_restaurants: RestaurantsTable;
  catalog_terms: TermsTable;
  catalog_term_trigrams: TermTrigramsTable;
  catalog_restaurant_terms: RestaurantTermsTable;
  catalog_restaurant_cuisines: RestaurantCuisinesTable;
  catalog_categories: CategoriesTable;
  catalog_items: ItemsTable;
  catalog_groups: GroupsTable;
  catalog_options: OptionsTable;
}

export type RestaurantRow = Selectable<RestaurantsTable>;
export type NewRestaurantRow = Insertable<RestaurantsTable>;
export type RestaurantUpdate = Updateable<RestaurantsTable>;
export type CategoryRow = Selectable<CategoriesTable>;
export type NewCategoryRow = Insertable<CategoriesTable>;
export type ItemRow = Selectable<ItemsTable>;
export type NewItemRow = Insertable<ItemsTable>;
export type GroupRow = Selectable<GroupsTable>;
export type NewGroupRow = Insertable<GroupsTable>;
export type OptionRow = Selectable<OptionsTable>;
export type NewOptionRow = Insertable<OptionsTable>;
