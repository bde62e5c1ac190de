import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * Webhook signing secrets at rest. dabba needs each secret as is to sign deliveries, so it cannot
 * keep only a hash; with WEBHOOK_SECRET_KEY (32 bytes) it stores them sealed with AES-256-GCM
 * (`v1:<iv>:<tag>:<ciphertext>`, base64url), so a copy of the database alone does not give the
 * secrets away. Without a key they are stored as they are (development). Both forms are read.
 * Rotation: the new key goes in WEBHOOK_SECRET_KEY and the old one in WEBHOOK_SECRET_KEYS_PREVIOUS
 * (opened with, never sealed with); resealSecret turns a secret stored in the clear or sealed with
 * a previous key into one sealed with the current key (the notifications service does that for
 * every webhook at start and hourly), after which the old key can be dropped.
 */
const PREFIX = "v1:";

export function sealSecret(secret: string, key: Buffer | undefined): string {
  if (!key) return secret;
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const ct = Buffer.concat([cipher.update(secret, "utf8"), cipher.final()]);
  return `${PREFIX}${iv.toString("base64url")}:${cipher.getAuthTag().toString("base64url")}:${ct.toString("base64url")}`;
}

/** The sealed secret's plain text with this key; undefined when the key is not the one that sealed it (GCM's tag). */
function openWith(parts: { iv: string; tag: string; ct: string }, key: Buffer): string | undefined {
  const decipher = createDecipheriv("aes-256-gcm", key, Buffer.from(parts.iv, "base64url"));
  decipher.setAuthTag(Buffer.from(parts.tag, "base64url"));
  try {
    return Buffer.concat([decipher.update(Buffer.from(parts.ct, "base64url")), decipher.final()]).toString("utf8");
  } catch {
    return undefined;
  }
}

/** Opens a stored secret; `by` tells which key did it ("clear": it was not sealed). */
function open(stored: string, key: Buffer | undefined, previous: readonly Buffer[]): { secret: string; by: "clear" | "current" | "previous" } {
  if (!stored.startsWith(PREFIX)) return { secret: stored, by: "clear" };
  if (!key && previous.length === 0) throw new Error("webhook secret is sealed but WEBHOOK_SECRET_KEY is not set");
  const [iv, tag, ct] = stored.slice(PREFIX.length).split(":");
  if (!iv || !tag || ct === undefined) throw new Error("webhook secret is malformed");
  const parts = { iv, tag, ct };
  const mine = key && openWith(parts, key);
  if (mine !== undefined) return { secret: mine, by: "current" };
  for (const old of previous) {
    const s = openWith(parts, old);
    if (s !== undefined) return { secret: s, by: "previous" };
  }
  throw new Error("webhook secret does not open with WEBHOOK_SECRET_KEY or WEBHOOK_SECRET_KEYS_PREVIOUS (another key sealed it)");
}

/** The secret to sign with; throws when it is sealed and neither the key nor a previous key sealed it. */
export function openSecret(stored: string, key: Buffer | undefined, previous: readonly Buffer[] = []): string {
  return open(stored, key, previous).secret;
}

/**
 * The stored form to write so the secret is sealed with the current key: undefined when it
 * already is, or when there is no key (nothing to seal with). Throws as openSecret does.
 */
export function resealSecret(stored: string, key: Buffer | undefined, previous: readonly Buffer[] = []): string | undefined {
  if (!key) return undefined;
  const { secret, by } = open(stored, key, previous);
  return by === "current" ? undefined : sealSecret(secret, key);
}
