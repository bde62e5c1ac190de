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
  "20261201T1000_catalog_search_postings": {
    // Text and cuisine searches read only the restaurants that match AND lie in the delivery box:
    // posting tables (term -> restaurant, cuisine -> restaurant) with a GiST index on
    // (key, geo) via btree_gist, so one index scan per matched key visits that key's restaurants
    // near the point instead of every restaurant in the box. Triggers keep them in step with
    // catalog_restaurants and catalog_terms, whatever writes those.
    async up(db: Kysely<any>) {
      await sql`CREATE EXTENSION IF NOT EXISTS btree_gist`.execute(db);

      // Geo-only ranking reads id, radius and static score: a narrow copy of the KNN index
      // (~130 bytes an entry against ~1.4 kB with the filter columns) touches ~10x fewer pages.
      // The wide index stays for rating / open-now filters without a cuisine.
      await sql`CREATE INDEX catalog_restaurants_geo_score_idx ON catalog_restaurants USING gist (geo)
        INCLUDE (id, delivery_radius_km, static_score)`.execute(db);

      // Query word -> similar terms without pg_trgm's operators (which need a per-transaction
      // threshold setting, and misbehave in PGlite): a term can reach word_similarity t with
      // word w only if it shares at least t * |trigrams(w)| of w's trigrams.
      await sql`CREATE TABLE catalog_term_trigrams (
          trgm text NOT NULL,
          term_id integer NOT NULL,
          PRIMARY KEY (trgm, term_id)
        )`.execute(db);
      await sql`INSERT INTO catalog_term_trigrams (trgm, term_id)
        SELECT DISTINCT g, t.id FROM catalog_terms t, unnest(show_trgm(t.term)) g`.execute(db);
      await sql`CREATE FUNCTION catalog_terms_add_trigrams() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO catalog_term_trigrams (trgm, term_id)
            SELECT DISTINCT g, NEW.id FROM unnest(show_trgm(NEW.term)) g ON CONFLICT DO NOTHING;
          RETURN NULL;
        END $$`.execute(db);
      await sql`CREATE TRIGGER catalog_terms_trigrams AFTER INSERT ON catalog_terms
        FOR EACH ROW EXECUTE FUNCTION catalog_terms_add_trigrams()`.execute(db);

      // Postings carry what ranking and the filters read, so searches over them are index-only.
      await sql`CREATE TABLE catalog_restaurant_terms (
          term_id integer NOT NULL,
          restaurant_id text NOT NULL,
          geo earth NOT NULL,
          delivery_radius_km double precision NOT NULL,
          static_score double precision NOT NULL
        )`.execute(db);
      await sql`CREATE TABLE catalog_restaurant_cuisines (
          cuisine text NOT NULL,
          restaurant_id text NOT NULL,
          geo earth NOT NULL,
          delivery_radius_km double precision NOT NULL,
          static_score double precision NOT NULL,
          rating double precision NOT NULL,
          is_open boolean NOT NULL,
          open_week int4multirange NOT NULL,
          utc_offset_minutes integer NOT NULL
        )`.execute(db);
      await sql`INSERT INTO catalog_restaurant_terms (term_id, restaurant_id, geo, delivery_radius_km, static_score)
        SELECT t, r.id, r.geo, r.delivery_radius_km, r.static_score FROM catalog_restaurants r, unnest(r.term_ids) t
        ORDER BY t`.execute(db);
      await sql`INSERT INTO catalog_restaurant_cuisines
          (cuisine, restaurant_id, geo, delivery_radius_km, static_score, rating, is_open, open_week, utc_offset_minutes)
        SELECT DISTINCT c, r.id, r.geo, r.delivery_radius_km, r.static_score, r.rating, r.is_open, r.open_week, r.utc_offset_minutes
        FROM catalog_restaurants r, unnest(r.cuisines) c`.execute(db);
      await sql`CREATE INDEX catalog_restaurant_terms_idx ON catalog_restaurant_terms USING gist (term_id, geo)
        INCLUDE (restaurant_id, delivery_radius_km, static_score)`.execute(db);
      await sql`CREATE INDEX catalog_restaurant_cuisines_idx ON catalog_restaurant_cuisines USING gist (cuisine, geo)
        INCLUDE (restaurant_id, delivery_radius_km, static_score, rating, is_open, open_week, utc_offset_minutes)`.execute(db);

      // Old postings are found through the same GiST index (key and the old point), so no
      // restaurant_id index is needed. Term postings are rewritten only when what they carry changed.
      await sql`CREATE FUNCTION catalog_restaurants_sync_postings() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
          terms_changed boolean := TG_OP <> 'UPDATE'
            OR (OLD.geo, OLD.term_ids, OLD.delivery_radius_km, OLD.static_score)
               IS DISTINCT FROM (NEW.geo, NEW.term_ids, NEW.delivery_radius_km, NEW.static_score);
        BEGIN
          IF TG_OP <> 'INSERT' THEN
            IF terms_changed THEN
              DELETE FROM catalog_restaurant_terms p USING unnest(OLD.term_ids) o(term_id)
                WHERE p.term_id = o.term_id AND p.geo <@ OLD.geo AND p.restaurant_id = OLD.id;
            END IF;
            DELETE FROM catalog_restaurant_cuisines p USING unnest(OLD.cuisines) o(cuisine)
              WHERE p.cuisine = o.cuisine AND p.geo <@ OLD.geo AND p.restaurant_id = OLD.id;
          END IF;
          IF TG_OP <> 'DELETE' THEN
            IF terms_changed THEN
              INSERT INTO catalog_restaurant_terms (term_id, restaurant_id, geo, delivery_radius_km, static_score)
                SELECT DISTINCT t, NEW.id, NEW.geo, NEW.delivery_radius_km, NEW.static_score FROM unnest(NEW.term_ids) t;
            END IF;
            INSERT INTO catalog_restaurant_cuisines
                (cuisine, restaurant_id, geo, delivery_radius_km, static_score, rating, is_open, open_week, utc_offset_minutes)
              SELECT DISTINCT c, NEW.id, NEW.geo, NEW.delivery_radius_km, NEW.static_score, NEW.rating, NEW.is_open,
                NEW.open_week, NEW.utc_offset_minutes
              FROM unnest(NEW.cuisines) c;
          END IF;
          RETURN NULL;
        END $$`.execute(db);
      await sql`CREATE TRIGGER catalog_restaurants_postings
        AFTER INSERT OR DELETE OR UPDATE OF geo, term_ids, cuisines, delivery_radius_km, rating, popularity, is_open, open_week, utc_offset_minutes
        ON catalog_restaurants FOR EACH ROW EXECUTE FUNCTION catalog_restaurants_sync_postings()`.execute(db);
    },
    async down(db: Kysely<any>) {
      await sql`DROP TRIGGER IF EXISTS catalog_restaurants_postings ON catalog_restaurants`.execute(db);
      await sql`DROP FUNCTION IF EXISTS catalog_restaurants_sync_postings()`.execute(db);
      await sql`DROP TRIGGER IF EXISTS catalog_terms_trigrams ON catalog_terms`.execute(db);
      await sql`DROP FUNCTION IF EXISTS catalog_terms_add_trigrams()`.execute(db);
      await sql`DROP TABLE IF EXISTS catalog_restaurant_cuisines, catalog_restaurant_terms, catalog_term_trigrams`.execute(db);
      await sql`DROP INDEX IF EXISTS catalog_restaurants_geo_score_idx`.execute(db);
    },
  },
  // The restaurant's answer policy: what happens to an order it does not answer in time (null = platform default).
  "20261202T1000_catalog_answer_policy": {
    async up(db: Kysely<any>) {
      await sql`ALTER TABLE catalog_restaurants
        ADD COLUMN answer_policy text NULL CHECK (answer_policy IN ('auto_confirm', 'auto_reject')),
        ADD COLUMN answer_timeout_s int4 NULL CHECK (answer_timeout_s BETWEEN 30 AND 3600)`.execute(db);
    },
    async down(db: Kysely<any>) {
      await sql`ALTER TABLE catalog_restaurants DROP COLUMN answer_policy, DROP COLUMN answer_timeout_s`.execute(db);
    },
  },
};
