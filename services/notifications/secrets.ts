import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * Webhook signing secrets at rest. dabba needs each secret as is to sign deliveries, so it cannot
 * keep only a hash; with WEBHOOK_SECRET_KEY (32 bytes) it stores them sealed with AES-256-GCM
 * (`v1:<iv>:<tag>:<ciphertext>`, base64url), so a copy of the database alone does not give the
 * secrets away. Without a key they are stored as they are (development). Both forms are read, so
 * setting a key later seals only new secrets; older ones keep working as stored.
 */
const PREFIX = "v1:";

export function sealSecret(secret: string, key: Buffer | undefined): string {
  if (!key) return secret;
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const ct = Buffer.concat([cipher.update(secret, "utf8"), cipher.final()]);
  return `${PREFIX}${iv.toString("base64url")}:${cipher.getAuthTag().toString("base64url")}:${ct.toString("base64url")}`;
}

/** The secret to sign with; throws when it is sealed and the key is missing or not the one that sealed it. */
export function openSecret(stored: string, key: Buffer | undefined): string {
  if (!stored.startsWith(PREFIX)) return stored;
  if (!key) throw new Error("webhook secret is sealed but WEBHOOK_SECRET_KEY is not set");
  const [iv, tag, ct] = stored.slice(PREFIX.length).split(":");
  if (!iv || !tag || ct === undefined) throw new Error("webhook secret is malformed");
  const decipher = createDecipheriv("aes-256-gcm", key, Buffer.from(iv, "base64url"));
  decipher.setAuthTag(Buffer.from(tag, "base64url"));
  try {
    return Buffer.concat([decipher.update(Buffer.from(ct, "base64url")), decipher.final()]).toString("utf8");
  } catch {
    throw new Error("webhook secret does not open with WEBHOOK_SECRET_KEY (another key sealed it)");
  }
}
