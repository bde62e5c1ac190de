import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { catalogMigrations } from "./db/migrations.js";
import { catalogRoutes } from "./routes.js";
import { DEMO_CITY, seedCity } from "./seed.js";
import { createCatalogStore, type CatalogStore } from "./store.js";
import { createEtaService } from "../eta/service.js";

/** Demo city loaded at start when config.demoSeed is set and the catalog is empty. */
export const DEMO_SEED = 1;
export const DEMO_RESTAURANTS = 200;

export interface CatalogOptions {
  /** Clock for opening hours (tests); defaults to the wall clock. */
  now?: () => Date;
  /** Store override (tests); defaults to the Kysely store over deps.db. */
  store?: CatalogStore;
}

/** CatalogService: restaurants, menus, search and authoritative cart pricing. */
export function createCatalogService(deps: ServiceDeps, opts: CatalogOptions = {}): ServiceModule {
  const logger = deps.logger;
  const store = opts.store ?? createCatalogStore(deps.db);
  const now = opts.now ?? (() => new Date());
  const eta = createEtaService({ redis: deps.redis, config: deps.config.eta, now: () => now().getTime() });
  return {
    name: "catalog",
    desc: CatalogService,
    impl: catalogRoutes({ store, config: deps.config, logger, now, eta }) as unknown as Partial<ServiceImpl<DescService>>,
    migrations: catalogMigrations,
    async start() {
      if (!deps.config.demoSeed) return;
      if ((await store.countRestaurants()) > 0) return;
      const summary = await seedCity(deps.db, { seed: DEMO_SEED, restaurants: DEMO_RESTAURANTS, store });
      logger.info({ ...summary, lat: DEMO_CITY.lat, lng: DEMO_CITY.lng }, "demo city loaded");
    },
    async stop() {},
  };
}
