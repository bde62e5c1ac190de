import assert from "node:assert/strict";
import { create, equals, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  createRouterTransport,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { CatalogService, PriceCartResponseSchema } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { OrderSchema } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogService } from "../../services/catalog/index.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { authInterceptor, bearer, createVerifier, mintToken, principalOf } from "../../services/platform/auth.js";
import { testConfig } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { LOCAL_PROTOCOL, createLocalTransport } from "../../services/platform/local-transport.js";
import { createLogger } from "../../services/platform/logger.js";
import { createPeers } from "../../services/platform/peers.js";
import { createMemoryRedis } from "../../services/platform/redis-memory.js";
import { REQUEST_ID_HEADER, loggingInterceptor } from "../../services/platform/request-log.js";
import type { ServiceModule, ServiceName } from "../../services/platform/service.js";
import { NEARBY, fixtureRestaurant } from "../helpers/fixtures.js";

const cfg = testConfig();
const RID = "lt-r1";

async function codeOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected the call to fail");
}

function untilAborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((resolve) => (signal.aborted ? resolve(signal.reason) : signal.addEventListener("abort", () => resolve(signal.reason), { once: true })));
}

describe("createLocalTransport", function () {
  this.timeout(60_000);
  let db: Db;
  let serverInterceptors: Interceptor[];
  let serviceToken: string;
  let catalog: ServiceModule;
  let local: Transport;
  let router: Transport;

  before(async () => {
    db = await openDb({ dataDir: "memory://" });
    catalog = createCatalogService({ config: cfg, db, redis: createMemoryRedis(), logger: createLogger("silent"), peer: () => { throw new Error("no peers"); } });
    await db.migrate("catalog", catalog.migrations);
    await createCatalogStore(db).insertRestaurants([fixtureRestaurant(RID)]);
    const verifier = await createVerifier(cfg.auth);
    serverInterceptors = [loggingInterceptor(createLogger("silent")), authInterceptor(verifier)];
    serviceToken = await mintToken(cfg.auth, { role: "service", sub: "order" });
    // The peer transport exactly as the mesh makes it for a co-hosted catalog.
    local = createPeers({
      hosted: () => new Map<ServiceName, ServiceModule>([["catalog", catalog]]),
      addrs: {},
      serverInterceptors,
      serviceToken: async () => serviceToken,
      maxMessageBytes: cfg.maxMessageBytes,
    })("catalog");
    router = createRouterTransport(({ service }) => service(catalog.desc, catalog.impl), {
      router: { interceptors: serverInterceptors },
      transport: { interceptors: [bearer(serviceToken)] },
    });
  });
  after(async () => {
    await db?.close();
  });

  const cart = (over: object = {}) => ({
    restaurantId: RID,
    lines: [
      { itemId: `${RID}-biryani`, quantity: 2, optionIds: [`${RID}-raita`], note: "mild" },
      { itemId: `${RID}-dosa`, quantity: 1, optionIds: [], note: "" },
    ],
    deliveryLocation: NEARBY,
    ...over,
  });

  it("prices a cart exactly as the router transport does", async () => {
    const viaLocal = await createClient(CatalogService, local).priceCart(cart());
    const viaRouter = await createClient(CatalogService, router).priceCart(cart());
    assert.equal(viaLocal.subtotal?.amountMinor, 2n * (1200n + 80n) + 450n);
    assert.ok(equals(PriceCartResponseSchema, viaLocal, viaRouter), "local and router answers differ");
    assert.equal(viaLocal.$typeName, "dabba.catalog.v1.PriceCartResponse");
  });

  it("passes the response headers set by the server interceptors (request id)", async () => {
    let header: Headers | undefined;
    await createClient(CatalogService, local).priceCart(cart(), { headers: { [REQUEST_ID_HEADER]: "req-local-1" }, onHeader: (h) => (header = h) });
    assert.equal(header?.get(REQUEST_ID_HEADER), "req-local-1");
  });

  for (const [name, over, code] of [
    ["an unknown restaurant", { restaurantId: "lt-nowhere" }, Code.NotFound],
    ["an unknown item", { lines: [{ itemId: "nope", quantity: 1, optionIds: [], note: "" }] }, Code.InvalidArgument],
    ["a delivery outside the radius", { deliveryLocation: { lat: 13.9, lng: 77.59 } }, Code.FailedPrecondition],
    ["an empty restaurant id", { restaurantId: "" }, Code.InvalidArgument],
  ] as const) {
    it(`fails ${name} with the router transport's code and message`, async () => {
      const a = await codeOf(createClient(CatalogService, local).priceCart(cart(over)));
      const b = await codeOf(createClient(CatalogService, router).priceCart(cart(over)));
      assert.equal(a.code, code, a.message);
      assert.equal(a.code, b.code);
      assert.equal(a.rawMessage, b.rawMessage);
      assert.equal(a.cause, undefined, "the server-side error object must not cross");
    });
  }

  it("answers UNAUTHENTICATED without a token, as the router transport does", async () => {
    const bare = createLocalTransport({ desc: catalog.desc, impl: catalog.impl, serverInterceptors, fallback: () => router });
    const bareRouter = createRouterTransport(({ service }) => service(catalog.desc, catalog.impl), { router: { interceptors: serverInterceptors } });
    const a = await codeOf(createClient(CatalogService, bare).priceCart(cart()));
    const b = await codeOf(createClient(CatalogService, bareRouter).priceCart(cart()));
    assert.equal(a.code, Code.Unauthenticated);
    assert.equal(a.rawMessage, b.rawMessage);
    assert.ok(a.metadata.get(REQUEST_ID_HEADER), "error metadata carries the request id as over the wire");
  });

  it("answers PERMISSION_DENIED for a customer token", async () => {
    const customer = await mintToken(cfg.auth, { role: "customer", sub: "c1" });
    const t = createLocalTransport({ desc: catalog.desc, impl: catalog.impl, serverInterceptors, clientInterceptors: [bearer(customer)], fallback: () => router });
    assert.equal((await codeOf(createClient(CatalogService, t).priceCart(cart()))).code, Code.PermissionDenied);
  });

  // ------------------------------------------------------------------------------------------
  // Deadlines, cancellation, streams and internal errors, against a stand-in OrderService.

  function transportFor(impl: Partial<ServiceImpl<typeof OrderService>>): Transport {
    return createLocalTransport({
      desc: OrderService as DescService,
      impl: impl as Partial<ServiceImpl<DescService>>,
      serverInterceptors,
      clientInterceptors: [bearer(serviceToken)],
      fallback: () => {
        throw new Error("unused");
      },
    });
  }

  it("gives the handler the deadline, aborts its signal when it passes and fails the call DEADLINE_EXCEEDED", async () => {
    let seen: { timeoutMs?: number; reason?: unknown; protocol?: string; role?: string } = {};
    const t = transportFor({
      async getOrder(_req, ctx: HandlerContext) {
        seen = { timeoutMs: ctx.timeoutMs(), protocol: ctx.protocolName, role: principalOf(ctx).role };
        seen.reason = await untilAborted(ctx.signal);
        return {};
      },
    });
    const started = Date.now();
    const err = await codeOf(createClient(OrderService, t).getOrder({ orderId: "o1" }, { timeoutMs: 80 }));
    assert.equal(err.code, Code.DeadlineExceeded);
    assert.ok(Date.now() - started < 1000);
    assert.ok(seen.timeoutMs !== undefined && seen.timeoutMs > 0 && seen.timeoutMs <= 80, `timeoutMs ${seen.timeoutMs}`);
    assert.equal(seen.protocol, LOCAL_PROTOCOL);
    assert.equal(seen.role, "service");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(ConnectError.from(seen.reason).code, Code.DeadlineExceeded);
  });

  it("propagates the caller's abort to the handler's signal and fails the call CANCELED", async () => {
    let reason: Promise<unknown> | undefined;
    const t = transportFor({
      async getOrder(_req, ctx) {
        reason = untilAborted(ctx.signal);
        await reason;
        return {};
      },
    });
    const ac = new AbortController();
    const call = createClient(OrderService, t).getOrder({ orderId: "o1" }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 30);
    assert.equal((await codeOf(call)).code, Code.Canceled);
    assert.ok(reason, "handler ran");
    assert.ok((await reason) !== undefined);
  });

  it("turns a non-Connect error into INTERNAL without its message or cause", async () => {
    const t = transportFor({
      async getOrder() {
        throw new Error("password=hunter2");
      },
    });
    const err = await codeOf(createClient(OrderService, t).getOrder({ orderId: "o1" }));
    assert.equal(err.code, Code.Internal);
    assert.equal(err.rawMessage, "internal error");
    assert.equal(err.cause, undefined);
  });

  it("streams server messages with headers, trailers and a mid-stream error code", async () => {
    const t = transportFor({
      async *watchRestaurantOrders(req, ctx) {
        ctx.responseHeader.set("x-snapshot", "2");
        yield { orders: [{ id: `${req.restaurantId}-a` }], snapshot: true };
        yield { orders: [create(OrderSchema, { id: `${req.restaurantId}-b` })] };
        ctx.responseTrailer.set("x-done", "yes");
        if (req.restaurantId === "fail") throw new ConnectError("feed lost", Code.Unavailable);
      },
    });
    const client = createClient(OrderService, t);
    let header: Headers | undefined;
    let trailer: Headers | undefined;
    const ids: string[] = [];
    for await (const m of client.watchRestaurantOrders({ restaurantId: "r9" }, { onHeader: (h) => (header = h), onTrailer: (h) => (trailer = h) })) {
      ids.push(m.orders[0]?.id ?? "");
      assert.equal(m.$typeName, "dabba.order.v1.WatchRestaurantOrdersResponse");
    }
    assert.deepEqual(ids, ["r9-a", "r9-b"]);
    assert.equal(header?.get("x-snapshot"), "2");
    assert.ok(header?.get(REQUEST_ID_HEADER));
    assert.equal(trailer?.get("x-done"), "yes");

    const got: string[] = [];
    const err = await codeOf(
      (async () => {
        for await (const m of client.watchRestaurantOrders({ restaurantId: "fail" })) got.push(m.orders[0]?.id ?? "");
      })(),
    );
    assert.deepEqual(got, ["fail-a", "fail-b"]);
    assert.equal(err.code, Code.Unavailable);
    assert.equal(err.rawMessage, "feed lost");
    assert.equal(err.metadata.get("x-done"), "yes");
  });

  it("aborts a server stream's handler when the caller cancels, and ends it on a deadline", async () => {
    let finished: (() => void) | undefined;
    const ended = new Promise<void>((r) => (finished = r));
    let reason: unknown;
    const t = transportFor({
      async *watchRestaurantOrders(_req, ctx) {
        try {
          yield { orders: [{ id: "first" }] };
          reason = await untilAborted(ctx.signal);
        } finally {
          finished!();
        }
      },
    });
    const client = createClient(OrderService, t);
    const ac = new AbortController();
    const got: string[] = [];
    const err = await codeOf(
      (async () => {
        for await (const m of client.watchRestaurantOrders({ restaurantId: "r" }, { signal: ac.signal })) {
          got.push(m.orders[0]?.id ?? "");
          setTimeout(() => ac.abort(), 10);
        }
      })(),
    );
    assert.deepEqual(got, ["first"]);
    assert.equal(err.code, Code.Canceled);
    await ended;
    assert.ok(reason !== undefined);

    const dl = await codeOf(
      (async () => {
        for await (const _ of client.watchRestaurantOrders({ restaurantId: "r" }, { timeoutMs: 60 })) void _;
      })(),
    );
    assert.equal(dl.code, Code.DeadlineExceeded);
  });

  it("ends a server stream's handler when the caller stops reading and aborts later", async () => {
    let finished: (() => void) | undefined;
    const ended = new Promise<void>((r) => (finished = r));
    const t = transportFor({
      async *watchRestaurantOrders(_req, ctx) {
        try {
          yield { orders: [{ id: "first" }] };
          await untilAborted(ctx.signal);
        } finally {
          finished!();
        }
      },
    });
    const client = createClient(OrderService, t);
    const ac = new AbortController();
    for await (const _ of client.watchRestaurantOrders({ restaurantId: "r" }, { signal: ac.signal })) break;
    ac.abort();
    await ended;
  });

  it("hands the handler the caller's request message without copying (the documented contract)", async () => {
    let received: unknown;
    const t = transportFor({
      async getOrder(req) {
        received = req;
        return {};
      },
    });
    const { GetOrderRequestSchema } = await import("../../gen/dabba/order/v1/order_service_pb.js");
    const req = create(GetOrderRequestSchema, { orderId: "o1" });
    await createClient(OrderService, t).getOrder(req);
    assert.equal(received, req);
  });
});
