import { createHash } from "node:crypto";
import { cityPricingFor } from "../../platform/config.js";
import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { RestaurantResultSchema } from "../../../gen/dabba/catalog/v1/catalog_pb.js";
import {
  SearchRestaurantsResponseSchema,
  type SearchRestaurantsRequest,
  type SearchRestaurantsResponse,
} from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { invalid } from "../../platform/errors.js";
import {
  DEFAULT_PAGE_SIZE,
  DEFAULT_RADIUS_KM,
  MAX_CUISINE_FILTERS,
  MAX_PAGE_SIZE,
  MAX_QUERY_CHARS,
  MAX_RADIUS_KM,
  MAX_SEARCH_OFFSET,
  deliveryFeeMinor,
  normalizeQuery,
  textThreshold,
} from "../domain.js";
import type { SearchQuery } from "../store.js";
import { eta, etaRestaurant, money, restaurantProto, type HandlerDeps } from "./proto.js";
import { requireLatLng } from "./validate.js";

const MAX_TOKEN_CHARS = 200;
const CUISINE_TAG = /^[a-z0-9][a-z0-9-]{0,39}$/;

/** The search a page token is bound to: everything but the page size and the token itself. */
interface ValidSearch {
  lat: number;
  lng: number;
  radiusKm: number;
  query: string;
  cuisines: string[];
  minRating: number;
  openNow: boolean;
  pageSize: number;
  offset: number;
}

export function validateSearch(req: SearchRestaurantsRequest): ValidSearch {
  const { lat, lng } = requireLatLng("location", req.location);
  if (!Number.isFinite(req.radiusKm) || req.radiusKm < 0 || req.radiusKm > MAX_RADIUS_KM) {
    throw invalid("radius_km", `must be 0 (default ${DEFAULT_RADIUS_KM}) to ${MAX_RADIUS_KM}`);
  }
  const radiusKm = req.radiusKm === 0 ? DEFAULT_RADIUS_KM : req.radiusKm;
  if ([...req.query].length > MAX_QUERY_CHARS) throw invalid("query", `at most ${MAX_QUERY_CHARS} characters`);
  const query = normalizeQuery(req.query);
  if (req.cuisines.length > MAX_CUISINE_FILTERS) throw invalid("cuisines", `at most ${MAX_CUISINE_FILTERS} cuisines`);
  const cuisines = req.cuisines.map((c, i) => {
    const t = c.trim().toLowerCase();
    if (!CUISINE_TAG.test(t)) throw invalid(`cuisines[${i}]`, "must be a cuisine tag (letters, digits, dashes; at most 40)");
    return t;
  });
  if (!Number.isFinite(req.minRating) || req.minRating < 0 || req.minRating > 5) throw invalid("min_rating", "must be 0 to 5");
  if (req.pageSize < 0 || req.pageSize > MAX_PAGE_SIZE) throw invalid("page_size", `must be 0 (default ${DEFAULT_PAGE_SIZE}) to ${MAX_PAGE_SIZE}`);
  const pageSize = req.pageSize === 0 ? DEFAULT_PAGE_SIZE : req.pageSize;
  const base = { lat, lng, radiusKm, query, cuisines: [...new Set(cuisines)].sort(), minRating: req.minRating, openNow: req.openNow };
  const offset = req.pageToken ? decodePageToken(req.pageToken, searchHash(base)) : 0;
  return { ...base, pageSize, offset };
}

/** Identifies the search a token belongs to; a token is rejected with any other search. */
function searchHash(s: Omit<ValidSearch, "pageSize" | "offset">): string {
  const canonical = JSON.stringify([s.lat, s.lng, s.radiusKm, s.query, s.cuisines, s.minRating, s.openNow]);
  return createHash("sha256").update(canonical).digest("base64url").slice(0, 16);
}

/** Opaque page token: base64url of {"o": offset, "h": search hash}. */
export function encodePageToken(offset: number, hash: string): string {
  return Buffer.from(JSON.stringify({ o: offset, h: hash })).toString("base64url");
}

function decodePageToken(token: string, hash: string): number {
  if (token.length > MAX_TOKEN_CHARS || !/^[A-Za-z0-9_-]+$/.test(token)) throw invalid("page_token", "malformed");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalid("page_token", "malformed");
  }
  const t = parsed as { o?: unknown; h?: unknown };
  if (typeof t !== "object" || t === null || typeof t.h !== "string" || typeof t.o !== "number" || !Number.isInteger(t.o) || t.o < 0 || t.o > MAX_SEARCH_OFFSET) {
    throw invalid("page_token", "malformed");
  }
  if (t.h !== hash) throw invalid("page_token", "belongs to a different search; start again without a token");
  return t.o;
}

export function searchRestaurants(deps: HandlerDeps) {
  return async (req: SearchRestaurantsRequest, ctx: HandlerContext): Promise<SearchRestaurantsResponse> => {
    principalOf(ctx);
    const s = validateSearch(req);
    const now = deps.now();
    const limit = Math.min(s.pageSize, MAX_SEARCH_OFFSET - s.offset);
    const q: SearchQuery = {
      lat: s.lat,
      lng: s.lng,
      radiusKm: s.radiusKm,
      query: s.query || undefined,
      textThreshold: textThreshold(s.query),
      cuisines: s.cuisines,
      minRating: s.minRating,
      openNow: s.openNow,
      now,
      // One extra row tells whether another page exists.
      limit: limit + 1,
      offset: s.offset,
    };
    const hits = limit > 0 ? await deps.store.search(q) : [];
    const page = hits.slice(0, limit);
    const more = hits.length > limit && s.offset + limit < MAX_SEARCH_OFFSET;
    const quotes = await deps.eta.quoteMany(page.map((h) => etaRestaurant(h.restaurant)), { lat: s.lat, lng: s.lng });
    return create(SearchRestaurantsResponseSchema, {
      results: page.map((h, i) =>
        create(RestaurantResultSchema, {
          restaurant: restaurantProto(h.restaurant, now),
          distanceKm: Math.round(h.distanceKm * 1000) / 1000,
          deliveryFee: money(deliveryFeeMinor(cityPricingFor(deps.config.orders, h.restaurant.city), h.distanceKm), h.restaurant.currency),
          eta: eta(quotes[i]!),
          score: h.score,
        }),
      ),
      nextPageToken: more ? encodePageToken(s.offset + limit, searchHash(s)) : "",
    });
  };
}
