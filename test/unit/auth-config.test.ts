import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { SignJWT, exportSPKI, generateKeyPair } from "jose";
import { createVerifier, mintToken } from "../../services/platform/auth.js";
import { ConfigError, loadConfig, parseServices, testConfig } from "../../services/platform/config.js";

const auth = testConfig().auth;

async function rejectsWith(p: Promise<unknown>, code: Code, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof ConnectError && e.code === code && msg.test(e.rawMessage));
}

describe("platform auth: token verification", () => {
  it("accepts an HS256 token minted with the secret and yields its principal", async () => {
    const v = await createVerifier(auth);
    assert.deepEqual(await v.verify(await mintToken(auth, { role: "restaurant", sub: "staff-9", restaurantId: "r1" })), {
      role: "restaurant",
      sub: "staff-9",
      restaurantId: "r1",
    });
  });

  for (const alg of ["RS256", "ES256"] as const) {
    it(`accepts ${alg} tokens signed by the configured public key's private key`, async () => {
      const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
      const v = await createVerifier({ ...auth, hsSecret: undefined, publicKeyPem: await exportSPKI(publicKey), publicKeyAlg: alg });
      const token = await new SignJWT({ role: "driver" }).setProtectedHeader({ alg }).setSubject("d7").setIssuer("dabba").setAudience("dabba").setExpirationTime("5m").sign(privateKey);
      assert.deepEqual(await v.verify(token), { role: "driver", sub: "d7", restaurantId: undefined });
      // An HS256 token cannot stand in for the asymmetric key.
      await rejectsWith(v.verify(await mintToken(auth, { role: "ops", sub: "x" })), Code.Unauthenticated, /invalid token/);
    });
  }

  it("rejects expired tokens, other issuers and audiences, unknown roles and restaurant tokens without a restaurant", async () => {
    const v = await createVerifier(auth);
    const key = new TextEncoder().encode(auth.hsSecret);
    const base = () => new SignJWT({ role: "customer" }).setProtectedHeader({ alg: "HS256" }).setSubject("c").setIssuer("dabba").setAudience("dabba").setExpirationTime("5m");
    await rejectsWith(v.verify(await mintToken(auth, { role: "customer", sub: "c" }, -120)), Code.Unauthenticated, /expired/);
    await rejectsWith(v.verify(await base().setIssuer("evil").sign(key)), Code.Unauthenticated, /invalid/);
    await rejectsWith(v.verify(await base().setAudience("other").sign(key)), Code.Unauthenticated, /invalid/);
    await rejectsWith(
      v.verify(await new SignJWT({ role: "admin" }).setProtectedHeader({ alg: "HS256" }).setSubject("c").setIssuer("dabba").setAudience("dabba").setExpirationTime("5m").sign(key)),
      Code.Unauthenticated,
      /role/,
    );
    await rejectsWith(
      v.verify(await new SignJWT({ role: "restaurant" }).setProtectedHeader({ alg: "HS256" }).setSubject("s").setIssuer("dabba").setAudience("dabba").setExpirationTime("5m").sign(key)),
      Code.Unauthenticated,
      /restaurant_id/,
    );
    await rejectsWith(
      v.verify(await new SignJWT({ role: "customer" }).setProtectedHeader({ alg: "HS256" }).setSubject("c").setIssuer("dabba").setAudience("dabba").sign(key)),
      Code.Unauthenticated,
      /invalid/,
    );
  });
});

describe("platform config", () => {
  it("defaults to every service on 8080/8081 with embedded storage and a stored dev secret", () => {
    const dir = mkdtempSync(join(tmpdir(), "dabba-cfg-"));
    const c = loadConfig({ DABBA_DATA_DIR: dir });
    assert.deepEqual(c.services, ["catalog", "order", "dispatch", "location", "tracking"]);
    assert.equal(c.port, 8080);
    assert.equal(c.webPort, 8081);
    assert.equal(c.databaseUrl, undefined);
    assert.equal(c.auth.devSecret, true);
    assert.equal(readFileSync(join(dir, "dev-jwt-secret"), "utf8").trim(), c.auth.hsSecret);
    assert.equal(loadConfig({ DABBA_DATA_DIR: dir }).auth.hsSecret, c.auth.hsSecret, "the dev secret is reused");
    assert.ok(Object.isFrozen(c));
  });

  it("parses SERVICES lists and rejects unknown names", () => {
    assert.deepEqual(parseServices("order, catalog"), ["order", "catalog"]);
    assert.throws(() => parseServices("order,payments"), /unknown service "payments"/);
  });

  it("refuses split deployments without shared storage and a shared secret, naming what is missing", () => {
    assert.throws(() => loadConfig({ SERVICES: "order", REDIS_URL: "redis://x" }), (e: Error) => e instanceof ConfigError && /set DATABASE_URL\./.test(e.message));
    assert.throws(() => loadConfig({ SERVICES: "order" }), /DATABASE_URL and REDIS_URL/);
    assert.throws(() => loadConfig({ SERVICES: "order", DATABASE_URL: "postgres://x", REDIS_URL: "redis://x" }), /JWT_SECRET or JWT_PUBLIC_KEY/);
    const c = loadConfig({ SERVICES: "order", DATABASE_URL: "postgres://x", REDIS_URL: "redis://x", JWT_SECRET: "s".repeat(32), CATALOG_ADDR: "catalog:8080" });
    assert.deepEqual(c.peerAddrs, { catalog: "catalog:8080" });
  });

  it("validates numbers and secrets", () => {
    assert.throws(() => loadConfig({ PORT: "80a", JWT_SECRET: "s".repeat(32) }), /PORT must be an integer/);
    assert.throws(() => loadConfig({ JWT_SECRET: "short" }), /at least 32/);
    assert.throws(() => loadConfig({ DEMO_SEED: "maybe", JWT_SECRET: "s".repeat(32) }), /DEMO_SEED must be true or false/);
  });
});
