import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { sql } from "kysely";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { WebhookDeliveryStatus } from "../../gen/dabba/tracking/v1/tracking_pb.js";
import { TrackingService } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { defaultNotificationsConfig } from "../../services/platform/config.js";
import { resealWebhookSecrets } from "../../services/notifications/index.js";
import { openSecret } from "../../services/notifications/secrets.js";
import { verifySignature } from "../../services/notifications/signature.js";
import { createNotificationsStore } from "../../services/notifications/store.js";
import { uniqueId } from "../helpers/backends.js";
import { expectCode } from "../helpers/expect.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { sleep, until } from "../helpers/wait.js";

const TIMEOUT_MS = 400;
const MAX_ATTEMPTS = 4;
/** Signing secrets are sealed at rest in this suite (WEBHOOK_SECRET_KEY). */
const SECRET_KEY = randomBytes(32);

/** What the receiver does with the next request on a path: answer a status, or never answer (the sender times out). */
type Behaviour = number | "hang";

interface Received {
  path: string;
  body: string;
  eventId: string;
  attempt: number;
  signature: string;
  verified: boolean;
  at: number;
}

/**
 * A partner's endpoint: verifies the signature with the secret registered for its path (401 when
 * it does not verify), then follows the path's script (500, hang, 200 ...); once the script is
 * used up it answers 200.
 */
function receiver() {
  const secrets = new Map<string, string>();
  const scripts = new Map<string, Behaviour[]>();
  const got: Received[] = [];
  const hung: ServerResponse[] = [];
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const path = req.url ?? "";
      const signature = String(req.headers["dabba-signature"] ?? "");
      const v = verifySignature(signature, body, secrets.get(path) ?? "", 300);
      got.push({ path, body, eventId: String(req.headers["dabba-event-id"]), attempt: Number(req.headers["dabba-delivery-attempt"]), signature, verified: v.ok, at: Date.now() });
      if (!v.ok) return void res.writeHead(401).end(v.reason);
      const next = scripts.get(path)?.shift() ?? 200;
      if (next === "hang") return void hung.push(res);
      res.writeHead(next, { "content-type": "text/plain" }).end(next < 300 ? "ok" : "boom");
    });
  });
  return {
    server,
    got,
    secrets,
    scripts,
    async listen(): Promise<string> {
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    },
    async close() {
      for (const r of hung) r.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`Webhooks against a real HTTP receiver (${backend} storage)`, function () {
    this.timeout(120_000);
    let t: TestMesh;
    let rx: ReturnType<typeof receiver>;
    let base: string;

    before(async () => {
      t = await startTestMesh(backend, {
        services: ["catalog", "order", "tracking"],
        notifications: {
          ...defaultNotificationsConfig,
          allowPrivateNetworks: true, // the receiver listens on 127.0.0.1
          webhookMaxAttempts: MAX_ATTEMPTS,
          webhookBackoffBaseMs: 100,
          webhookBackoffCapMs: 400,
          webhookTimeoutMs: TIMEOUT_MS,
          webhookLeaseMs: 5_000,
          webhookLeaseCheckMs: 1_000,
          secretKey: SECRET_KEY,
        },
      });
      rx = receiver();
      base = await rx.listen();
    });
    after(async () => {
      await rx?.close();
      await t?.close();
    });

    async function placeAndAccept(): Promise<string> {
      const customer = await t.client(OrderService, "grpc-js", "customer", `c-${uniqueId()}`);
      const placed = await customer.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 2 }], delivery: { location: NEARBY, addressLine: "7 Park Road" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      const orderId = placed.order!.id;
      await (await t.client(OrderService, "grpc-js", "restaurant", "staff", t.restaurantId)).acceptOrder({ orderId });
      return orderId;
    }

    async function register(path: string): Promise<string> {
      const kitchen = await t.client(TrackingService, "grpc-js", "restaurant", "staff", t.restaurantId);
      const res = await kitchen.registerWebhook({ url: `${base}${path}`, eventTypes: ["confirmed"] });
      rx.secrets.set(path, res.signingSecret);
      // Stored sealed (WEBHOOK_SECRET_KEY), never as the secret the receiver holds.
      const stored = await sql<{ secret: string }>`select secret from webhooks where id = ${res.webhook!.id}`.execute(t.mesh.db.kysely);
      assert.match(stored.rows[0]!.secret, /^v1:/);
      assert.ok(!stored.rows[0]!.secret.includes(res.signingSecret.slice(6)));
      return res.webhook!.id;
    }

    it("signs every attempt, retries a 500 and a timeout with backoff, and delivers when the receiver recovers", async () => {
      const path = `/flaky-${uniqueId()}`;
      rx.scripts.set(path, [500, "hang", 200]);
      const webhookId = await register(path);
      const orderId = await placeAndAccept();
      const tracking = await t.client(TrackingService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      await until(async () => (await tracking.listWebhookDeliveries({ webhookId })).deliveries[0]?.status === WebhookDeliveryStatus.DELIVERED, 20_000, "delivered");

      const mine = rx.got.filter((g) => g.path === path);
      assert.deepEqual(mine.map((g) => g.attempt), [1, 2, 3]);
      assert.ok(mine.every((g) => g.verified), "every attempt carries a valid signature");
      assert.equal(new Set(mine.map((g) => g.eventId)).size, 1);
      assert.equal(new Set(mine.map((g) => g.body)).size, 1, "the same body on every attempt");
      const body = JSON.parse(mine[0]!.body);
      assert.equal(body.type, "confirmed");
      assert.equal(body.order_id, orderId);
      assert.equal(body.id, mine[0]!.eventId);
      assert.equal(body.restaurant_id, t.restaurantId);
      assert.equal(body.status, "ORDER_STATUS_CONFIRMED");
      assert.match(body.occurred_at, /^\d{4}-\d\d-\d\dT/);
      // The third attempt came after the timeout of the second (the sender gave up at TIMEOUT_MS).
      assert.ok(mine[2]!.at - mine[1]!.at >= TIMEOUT_MS - 50, `${mine[2]!.at - mine[1]!.at} ms between attempts 2 and 3`);

      const [d] = (await tracking.listWebhookDeliveries({ webhookId })).deliveries;
      assert.equal(d!.attempts, 3);
      assert.equal(d!.eventType, "confirmed");
      assert.deepEqual(
        d!.attemptLog.map((a) => [a.attempt, a.statusCode, a.error.replace(/\d+/g, "N")]),
        [
          [1, 500, "HTTP N"],
          [2, 0, "timeout after N ms"],
          [3, 200, ""],
        ],
      );
      assert.ok(d!.attemptLog[1]!.durationMs >= TIMEOUT_MS - 50);
      // Nothing more is sent once delivered.
      await sleep(600);
      assert.equal(rx.got.filter((g) => g.path === path).length, 3);
    });

    it("dead-letters after the maximum attempts, and ReplayDeadLetters delivers them once the receiver recovers", async () => {
      const path = `/down-${uniqueId()}`;
      // Down for exactly the attempts of two deliveries, then up.
      rx.scripts.set(path, Array.from({ length: 2 * MAX_ATTEMPTS }, () => 503));
      const webhookId = await register(path);
      await placeAndAccept();
      await placeAndAccept();
      const ops = await t.client(TrackingService, "grpc-js", "ops", "op-1");
      await until(
        async () => (await ops.listWebhookDeliveries({ webhookId, status: WebhookDeliveryStatus.DEAD })).deliveries.length === 2,
        30_000,
        "two dead letters",
      );
      const dead = (await ops.listWebhookDeliveries({ webhookId, status: WebhookDeliveryStatus.DEAD })).deliveries;
      for (const d of dead) {
        assert.equal(d.attempts, MAX_ATTEMPTS);
        assert.deepEqual(d.attemptLog.map((a) => a.statusCode), Array(MAX_ATTEMPTS).fill(503));
      }
      const before = rx.got.filter((g) => g.path === path).length;
      await sleep(800);
      assert.equal(rx.got.filter((g) => g.path === path).length, before, "a dead letter is not retried");

      // The receiver recovers (its script is used up: 200 from now on); replay by the restaurant.
      const kitchen = await t.client(TrackingService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      await expectCode((await t.client(TrackingService, "connect-grpc", "restaurant", "staff", `r-${uniqueId()}`)).replayDeadLetters({ webhookId }), Code.PermissionDenied);
      assert.equal((await kitchen.replayDeadLetters({ webhookId })).requeued, 2);
      assert.equal((await kitchen.replayDeadLetters({ webhookId })).requeued, 0, "nothing dead any more");
      await until(
        async () => (await kitchen.listWebhookDeliveries({ webhookId, status: WebhookDeliveryStatus.DELIVERED })).deliveries.length === 2,
        20_000,
        "replayed deliveries delivered",
      );
      const replayed = rx.got.filter((g) => g.path === path).slice(before);
      assert.deepEqual(replayed.map((g) => g.attempt), [MAX_ATTEMPTS + 1, MAX_ATTEMPTS + 1]);
      assert.ok(replayed.every((g) => g.verified));
      assert.deepEqual(new Set(replayed.map((g) => g.eventId)), new Set(dead.map((d) => d.eventId)));
    });

    it("rotates the sealing key: reseals secrets stored in the clear or with the previous key, and deliveries still verify", async () => {
      const store = createNotificationsStore(t.mesh.db);
      const stored = async (id: string) => (await sql<{ secret: string }>`select secret from webhooks where id = ${id}`.execute(t.mesh.db.kysely)).rows[0]!.secret;
      const sealedPath = `/rot-${uniqueId()}`;
      const sealed = await register(sealedPath);
      const clearPath = `/clear-${uniqueId()}`;
      const clear = await register(clearPath);
      // As if registered before any key was set.
      await sql`update webhooks set secret = ${rx.secrets.get(clearPath)!} where id = ${clear}`.execute(t.mesh.db.kysely);

      const next = randomBytes(32);
      const rotated = await resealWebhookSecrets(store, { secretKey: next, previousSecretKeys: [SECRET_KEY] }, t.mesh.logger);
      assert.ok(rotated.resealed >= 2, `resealed ${rotated.resealed}`);
      assert.equal(rotated.unopenable, 0);
      for (const [id, path] of [[sealed, sealedPath], [clear, clearPath]] as const) {
        const s = await stored(id);
        assert.match(s, /^v1:/);
        assert.equal(openSecret(s, next), rx.secrets.get(path), "opens with the new key alone");
        assert.throws(() => openSecret(s, SECRET_KEY), /another key sealed it/);
      }
      assert.deepEqual(await resealWebhookSecrets(store, { secretKey: next, previousSecretKeys: [SECRET_KEY] }, t.mesh.logger), { resealed: 0, unopenable: 0 }, "nothing left to reseal");
      // Without the key that sealed them, secrets are reported, not rewritten.
      const lost = await resealWebhookSecrets(store, { secretKey: randomBytes(32), previousSecretKeys: [] }, t.mesh.logger);
      assert.equal(lost.resealed, 0);
      assert.ok(lost.unopenable >= 2);

      // Back to this mesh's key (the new one as the previous): deliveries are signed with the same secret.
      await resealWebhookSecrets(store, { secretKey: SECRET_KEY, previousSecretKeys: [next] }, t.mesh.logger);
      const before = rx.got.filter((g) => g.path === sealedPath || g.path === clearPath).length;
      await placeAndAccept();
      await until(() => rx.got.filter((g) => g.path === sealedPath || g.path === clearPath).length >= before + 2, 20_000, "deliveries to both");
      assert.ok(rx.got.filter((g) => g.path === sealedPath || g.path === clearPath).every((g) => g.verified), "signatures verify with the receivers' secrets");
    });
  });
}
