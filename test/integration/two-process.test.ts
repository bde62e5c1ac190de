import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { bearer, mintToken } from "../../services/platform/auth.js";
import { testConfig } from "../../services/platform/config.js";
import { openDb } from "../../services/platform/db.js";
import { redisUrl, requireReal, uniqueId } from "../helpers/backends.js";
import { NEARBY, fixtureRestaurant } from "../helpers/fixtures.js";
import { createRunDatabase } from "../helpers/run-database.js";

const SECRET = "two-process-test-secret-two-process-test";

interface Proc {
  child: ChildProcess;
  port: number;
  logs: string[];
}

/** Starts `services/main.ts` as its own process and waits for its "listening" log line. */
async function startProcess(env: Record<string, string>): Promise<Proc> {
  const child = spawn(process.execPath, ["--import", "tsx", "services/main.ts"], {
    env: { ...process.env, PORT: "0", WEB_PORT: "0", HOST: "127.0.0.1", LOG_LEVEL: "info", DEMO_SEED: "false", JWT_SECRET: SECRET, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: string[] = [];
  child.stderr!.on("data", (d) => logs.push(String(d)));
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process did not start:\n${logs.join("")}`)), 30_000);
    lines.on("line", (line) => {
      logs.push(line);
      try {
        const rec = JSON.parse(line) as { grpc?: number };
        if (rec.grpc) {
          clearTimeout(timer);
          resolve(rec.grpc);
        }
      } catch {
        /* not JSON */
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`process exited with ${code}:\n${logs.join("\n")}`));
    });
  });
  return { child, port, logs };
}

async function stopProcess(p: Proc | undefined): Promise<number | null> {
  if (!p || p.child.exitCode !== null) return p?.child.exitCode ?? null;
  const exited = once(p.child, "exit");
  p.child.kill("SIGTERM");
  const [code] = (await exited) as [number | null];
  return code;
}

describe("two processes: catalog in one, order in the other, talking gRPC", function () {
  this.timeout(90_000);
  let run: { url: string; drop(): Promise<void> };
  let catalogProc: Proc | undefined;
  let orderProc: Proc | undefined;
  const rid = `r-${uniqueId()}`;
  const auth = { ...testConfig().auth, hsSecret: SECRET };

  before(async () => {
    await requireReal("postgres");
    await requireReal("redis");
    run = await createRunDatabase("two_proc");
    const shared = { DATABASE_URL: run.url, REDIS_URL: redisUrl() };
    catalogProc = await startProcess({ ...shared, SERVICES: "catalog" });
    orderProc = await startProcess({ ...shared, SERVICES: "order", CATALOG_ADDR: `127.0.0.1:${catalogProc.port}` });
    const db = await openDb({ databaseUrl: run.url, dataDir: "memory://" });
    await createCatalogStore(db).insertRestaurants([fixtureRestaurant(rid)]);
    await db.close();
  });

  after(async () => {
    await stopProcess(orderProc);
    await stopProcess(catalogProc);
    await run?.drop();
  });

  it("refuses to start split services without shared storage, saying why", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/main.ts"], {
      env: { ...process.env, SERVICES: "order", DATABASE_URL: "", REDIS_URL: "", JWT_SECRET: SECRET, PORT: "0", WEB_PORT: "0" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d) => (err += d));
    const [code] = (await once(child, "exit")) as [number];
    assert.equal(code, 2);
    assert.match(err, /DATABASE_URL and REDIS_URL/);
    assert.match(err, /cannot be shared/);
  });

  it("prices through the catalog process and places an order in the order process", async () => {
    const token = await mintToken(auth, { role: "customer", sub: `c-${uniqueId()}` });
    const orders = createClient(OrderService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${orderProc!.port}`, interceptors: [bearer(token)] }));
    const cart = {
      restaurantId: rid,
      lines: [{ itemId: `${rid}-biryani`, quantity: 1, optionIds: [`${rid}-egg`] }],
      delivery: { location: NEARBY, addressLine: "5 Brigade Road" },
      paymentToken: "tok_visa",
    };
    const quote = await orders.quoteOrder(cart);
    assert.equal(quote.subtotal!.amountMinor, 1260n);
    const placed = await orders.placeOrder(cart, { headers: { "idempotency-key": `k-${uniqueId()}` } });
    assert.equal(placed.order!.status, OrderStatus.PLACED);
    assert.equal(placed.order!.total!.amountMinor, quote.total!.amountMinor);

    const kitchenToken = await mintToken(auth, { role: "restaurant", sub: "staff", restaurantId: rid });
    const kitchen = createClient(OrderService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${orderProc!.port}`, interceptors: [bearer(kitchenToken)] }));
    const accepted = await kitchen.acceptOrder({ orderId: placed.order!.id });
    assert.equal(accepted.order!.status, OrderStatus.CONFIRMED);
  });

  it("serves only its own services on each process", async () => {
    const token = await mintToken(auth, { role: "customer", sub: "c1" });
    const catalogOnOrderProc = createClient(CatalogService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${orderProc!.port}`, interceptors: [bearer(token)] }));
    await assert.rejects(catalogOnOrderProc.getMenu({ restaurantId: rid }), (e: ConnectError) => e.code === Code.Unimplemented);
    const catalog = createClient(CatalogService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${catalogProc!.port}`, interceptors: [bearer(token)] }));
    assert.equal((await catalog.getMenu({ restaurantId: rid })).restaurant!.id, rid);
  });

  it("drains and exits cleanly on SIGTERM", async () => {
    assert.equal(await stopProcess(orderProc), 0);
    assert.equal(await stopProcess(catalogProc), 0);
  });
});
