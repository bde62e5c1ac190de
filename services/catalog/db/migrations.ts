import { sql, type Kysely, type Migration } from "kysely";

/**
 * Catalog migrations: frozen once released; add a new entry rather than editing one.
 * Run with their own migration table (kysely_migration_catalog).
 */
export const catalogMigrations: Record<string, Migration> = {
  "20261121T1000_catalog_init": {
    async up(db: Kysely<any>) {
      await sql`CREATE EXTENSION IF NOT EXISTS pg_trgm`.execute(db);
      await sql`CREATE EXTENSION IF NOT EXISTS cube`.execute(db);
      await sql`CREATE EXTENSION IF NOT EXISTS earthdistance`.execute(db);

      await sql`
        CREATE TABLE catalog_restaurants (
          id text PRIMARY KEY,
          name text NOT NULL,
          description text NOT NULL DEFAULT '',
          address text NOT NULL DEFAULT '',
          city text NOT NULL,
          utc_offset_minutes integer NOT NULL CHECK (utc_offset_minutes BETWEEN -840 AND 840),
          lat double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
          lng double precision NOT NULL CHECK (lng BETWEEN -180 AND 180),
          -- ll_to_earth(lat, lng), stored: computing it per row (an SQL function plus the earth
          -- domain checks) costs ~15 us a row, which the search cannot afford over thousands of rows.
          geo earth NOT NULL,
          cuisines text[] NOT NULL DEFAULT '{}',
          rating double precision NOT NULL DEFAULT 0 CHECK (rating BETWEEN 0 AND 5),
          rating_count integer NOT NULL DEFAULT 0,
          price_level integer NOT NULL DEFAULT 2 CHECK (price_level BETWEEN 1 AND 4),
          hours jsonb NOT NULL DEFAULT '[]',
          open_week int4multirange NOT NULL DEFAULT '{}',
          is_open boolean NOT NULL DEFAULT true,
          delivery_radius_km double precision NOT NULL CHECK (delivery_radius_km > 0 AND delivery_radius_km <= 50),
          avg_prep_minutes integer NOT NULL CHECK (avg_prep_minutes BETWEEN 1 AND 240),
          popularity double precision NOT NULL DEFAULT 0 CHECK (popularity BETWEEN 0 AND 1),
          currency text NOT NULL,
          -- Distinct lower-case words of name, cuisines and dish names (domain.searchText).
          terms text[] NOT NULL,
          created_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now()
        )`.execute(db);
      // Geo prefilter: earth_box(point, r) @> geo is answered by this GiST index. The INCLUDE
      // columns are everything geo-only ranking reads, so that scan is index-only (after VACUUM).
      await sql`CREATE INDEX catalog_restaurants_geo_idx ON catalog_restaurants USING gist (geo)
        INCLUDE (id, delivery_radius_km, rating, popularity)`.execute(db);
      // Text search is two index steps: query words -> similar terms (trigram GIN on catalog_terms),
      // then terms -> restaurants (array GIN here). word_similarity over each restaurant's whole
      // text costs ~100 us a row, too much for thousands of candidates.
      await sql`CREATE INDEX catalog_restaurants_terms_idx ON catalog_restaurants USING gin (terms)`.execute(db);
      await sql`CREATE TABLE catalog_terms (term text PRIMARY KEY)`.execute(db);
      await sql`CREATE INDEX catalog_terms_trgm_idx ON catalog_terms USING gin (term gin_trgm_ops)`.execute(db);
      // max(delivery_radius_km) bounds the geo box of every search; a btree makes it an index lookup.
      await sql`CREATE INDEX catalog_restaurants_radius_idx ON catalog_restaurants (delivery_radius_km)`.execute(db);

      await sql`
        CREATE TABLE catalog_categories (
          id text PRIMARY KEY,
          restaurant_id text NOT NULL REFERENCES catalog_restaurants(id) ON DELETE CASCADE,
          name text NOT NULL,
          position integer NOT NULL
        )`.execute(db);
      await sql`CREATE INDEX catalog_categories_restaurant_idx ON catalog_categories (restaurant_id, position)`.execute(db);

      await sql`
        CREATE TABLE catalog_items (
          id text PRIMARY KEY,
          restaurant_id text NOT NULL REFERENCES catalog_restaurants(id) ON DELETE CASCADE,
          category_id text NOT NULL REFERENCES catalog_categories(id) ON DELETE CASCADE,
          name text NOT NULL,
          description text NOT NULL DEFAULT '',
          price_minor bigint NOT NULL CHECK (price_minor >= 0),
          currency text NOT NULL,
          available boolean NOT NULL DEFAULT true,
          position integer NOT NULL
        )`.execute(db);
      await sql`CREATE INDEX catalog_items_restaurant_idx ON catalog_items (restaurant_id, position)`.execute(db);

      await sql`
        CREATE TABLE catalog_groups (
          id text PRIMARY KEY,
          item_id text NOT NULL REFERENCES catalog_items(id) ON DELETE CASCADE,
          name text NOT NULL,
          min_choices integer NOT NULL CHECK (min_choices >= 0),
          max_choices integer NOT NULL CHECK (max_choices >= 1 AND max_choices >= min_choices),
          position integer NOT NULL
        )`.execute(db);
      await sql`CREATE INDEX catalog_groups_item_idx ON catalog_groups (item_id, position)`.execute(db);

      await sql`
        CREATE TABLE catalog_options (
          id text PRIMARY KEY,
          group_id text NOT NULL REFERENCES catalog_groups(id) ON DELETE CASCADE,
          item_id text NOT NULL REFERENCES catalog_items(id) ON DELETE CASCADE,
          name text NOT NULL,
          price_delta_minor bigint NOT NULL DEFAULT 0 CHECK (price_delta_minor >= 0),
          available boolean NOT NULL DEFAULT true,
          position integer NOT NULL
        )`.execute(db);
      await sql`CREATE INDEX catalog_options_item_idx ON catalog_options (item_id, position)`.execute(db);
      await sql`CREATE INDEX catalog_options_group_idx ON catalog_options (group_id)`.execute(db);
    },
    async down(db: Kysely<any>) {
      for (const t of ["catalog_terms", "catalog_options", "catalog_groups", "catalog_items", "catalog_categories", "catalog_restaurants"]) {
        await sql`DROP TABLE IF EXISTS ${sql.table(t)}`.execute(db);
      }
    },
  },
  "20261130T1000_catalog_search_knn": {
    // Search walks restaurants nearest-first (GiST KNN, `geo <-> point`) and stops once no
    // farther restaurant can reach the page (store.ts). Everything that walk reads and filters
    // on sits in the index, so it never visits the heap (whose rows are in insertion order,
    // not in space: a heap visit per candidate was most of the old per-query cost).
    async up(db: Kysely<any>) {
      // The distance-free part of the ranking, kept at write time. The weights are
      // domain.W_RATING and domain.W_POPULARITY; changing them needs a new migration.
      await sql`ALTER TABLE catalog_restaurants ADD COLUMN static_score double precision
        GENERATED ALWAYS AS (0.3::float8 * (rating / 5) + 0.25::float8 * popularity) STORED`.execute(db);
      // Terms as small integer ids: an int4 array stays well below the size at which index
      // tuples compress their attributes (~500 bytes), which a text[] of ~40 words does not.
      await sql`ALTER TABLE catalog_terms ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY`.execute(db);
      await sql`ALTER TABLE catalog_terms ADD CONSTRAINT catalog_terms_id_key UNIQUE (id)`.execute(db);
      await sql`ALTER TABLE catalog_restaurants ADD COLUMN term_ids integer[] NOT NULL DEFAULT '{}'`.execute(db);
      await sql`UPDATE catalog_restaurants r
        SET term_ids = ARRAY(SELECT t.id FROM catalog_terms t WHERE t.term = ANY (r.terms) ORDER BY t.id)`.execute(db);
      await sql`DROP INDEX catalog_restaurants_geo_idx`.execute(db);
      // Replaced by term_ids in the geo index; a GIN path would compete with the KNN walk.
      await sql`DROP INDEX catalog_restaurants_terms_idx`.execute(db);
      await sql`CREATE INDEX catalog_restaurants_knn_idx ON catalog_restaurants USING gist (geo)
        INCLUDE (id, delivery_radius_km, static_score, rating, cuisines, is_open, open_week, utc_offset_minutes, term_ids)`.execute(db);
    },
    async down(db: Kysely<any>) {
      await sql`DROP INDEX IF EXISTS catalog_restaurants_knn_idx`.execute(db);
      await sql`CREATE INDEX catalog_restaurants_terms_idx ON catalog_restaurants USING gin (terms)`.execute(db);
      await sql`CREATE INDEX catalog_restaurants_geo_idx ON catalog_restaurants USING gist (geo)
        INCLUDE (id, delivery_radius_km, rating, popularity)`.execute(db);
      await sql`ALTER TABLE catalog_restaurants DROP COLUMN term_ids, DROP COLUMN static_score`.execute(db);
      await sql`ALTER TABLE catalog_terms DROP COLUMN id`.execute(db);
    },
  },
};
