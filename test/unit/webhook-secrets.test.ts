import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { openSecret, resealSecret, sealSecret } from "../../services/notifications/secrets.js";
import { ConfigError, loadConfig } from "../../services/platform/config.js";

describe("webhook signing secrets at rest", () => {
  const key = randomBytes(32);
  const secret = `whsec_${randomBytes(32).toString("hex")}`;

  it("seals with the key (a fresh nonce each time) and opens back to the secret", () => {
    const a = sealSecret(secret, key);
    const b = sealSecret(secret, key);
    assert.match(a, /^v1:/);
    assert.notEqual(a, b);
    assert.ok(!a.includes(secret.slice(6)));
    assert.equal(openSecret(a, key), secret);
    assert.equal(openSecret(b, key), secret);
  });

  it("stores and reads secrets as they are without a key, and reads those with a key set later", () => {
    assert.equal(sealSecret(secret, undefined), secret);
    assert.equal(openSecret(secret, undefined), secret);
    assert.equal(openSecret(secret, key), secret);
  });

  it("refuses a sealed secret without the key, with another key, or tampered with", () => {
    const sealed = sealSecret(secret, key);
    assert.throws(() => openSecret(sealed, undefined), /WEBHOOK_SECRET_KEY is not set/);
    assert.throws(() => openSecret(sealed, randomBytes(32)), /another key sealed it/);
    const [iv, tag, ct] = sealed.slice(3).split(":");
    const flipped = Buffer.from(ct!, "base64url");
    flipped[0] ^= 1;
    assert.throws(() => openSecret(`v1:${iv}:${tag}:${flipped.toString("base64url")}`, key), /another key sealed it/);
    assert.throws(() => openSecret("v1:broken", key), /malformed/);
  });

  it("opens with a previous key after a rotation, and reseals to the current key only what needs it", () => {
    const next = randomBytes(32);
    const old = sealSecret(secret, key);
    assert.equal(openSecret(old, next, [randomBytes(32), key]), secret);
    assert.throws(() => openSecret(old, next), /another key sealed it/);
    assert.throws(() => openSecret(old, undefined, [randomBytes(32)]), /another key sealed it/);
    const resealed = resealSecret(old, next, [key])!;
    assert.equal(openSecret(resealed, next), secret);
    assert.equal(resealSecret(resealed, next, [key]), undefined, "already sealed with the current key");
    assert.equal(openSecret(resealSecret(secret, next)!, next), secret, "a secret stored in the clear gets sealed");
    assert.equal(resealSecret(old, undefined, [key]), undefined, "no current key: nothing to seal with");
    assert.throws(() => resealSecret(old, next, []), /another key sealed it/);
  });

  it("reads WEBHOOK_SECRET_KEY as 64 hex characters or base64 of 32 bytes, and refuses anything else", () => {
    const env = { DABBA_DATA_DIR: "memory://", JWT_SECRET: "x".repeat(40) };
    assert.deepEqual(loadConfig({ ...env, WEBHOOK_SECRET_KEY: key.toString("hex") }).notifications.secretKey, key);
    assert.deepEqual(loadConfig({ ...env, WEBHOOK_SECRET_KEY: key.toString("base64") }).notifications.secretKey, key);
    assert.equal(loadConfig(env).notifications.secretKey, undefined);
    assert.throws(() => loadConfig({ ...env, WEBHOOK_SECRET_KEY: "short" }), (e: Error) => e instanceof ConfigError && /WEBHOOK_SECRET_KEY must be 32 bytes/.test(e.message));
    const prev = [randomBytes(32), randomBytes(32)];
    assert.deepEqual(loadConfig({ ...env, WEBHOOK_SECRET_KEYS_PREVIOUS: `${prev[0]!.toString("hex")}, ${prev[1]!.toString("base64")}` }).notifications.previousSecretKeys, prev);
    assert.deepEqual(loadConfig(env).notifications.previousSecretKeys, []);
    assert.throws(() => loadConfig({ ...env, WEBHOOK_SECRET_KEYS_PREVIOUS: `${prev[0]!.toString("hex")},nope` }), (e: Error) => e instanceof ConfigError && /WEBHOOK_SECRET_KEYS_PREVIOUS must be 32 bytes/.test(e.message));
  });
});
