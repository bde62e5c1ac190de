import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Webhook signatures, Stripe-style: `dabba-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
 * The timestamp is inside the signed text, so a captured request cannot be replayed later than
 * the receiver's tolerance with a fresh timestamp; receivers also dedupe by `dabba-event-id`.
 */

/** Header carrying the signature. */
export const SIGNATURE_HEADER = "dabba-signature";
/** Header carrying the event id (receivers dedupe by it: delivery is at least once). */
export const EVENT_ID_HEADER = "dabba-event-id";
/** Header carrying the attempt number of this delivery (1 for the first). */
export const ATTEMPT_HEADER = "dabba-delivery-attempt";

/** Hex HMAC-SHA256 of "<t>.<body>" under the secret. */
export function sign(secret: string, tSeconds: number, body: string): string {
  return createHmac("sha256", secret).update(`${tSeconds}.${body}`).digest("hex");
}

/** The signature header value for a body sent at tSeconds. */
export function signatureHeader(secret: string, tSeconds: number, body: string): string {
  return `t=${tSeconds},v1=${sign(secret, tSeconds, body)}`;
}

export type VerifyResult = { ok: true; t: number } | { ok: false; reason: "malformed" | "stale" | "mismatch" };

/**
 * What a receiver does: parse the header, refuse a timestamp further than toleranceS from its
 * clock, recompute the HMAC over the raw body and compare in constant time. Several v1 values
 * (secret rotation) are accepted when any matches.
 */
export function verifySignature(header: string | undefined, body: string, secret: string, toleranceS: number, nowS = Math.floor(Date.now() / 1000)): VerifyResult {
  if (!header) return { ok: false, reason: "malformed" };
  let t: number | undefined;
  const v1: string[] = [];
  for (const part of header.split(",")) {
    const i = part.indexOf("=");
    if (i < 0) continue;
    const k = part.slice(0, i).trim();
    const v = part.slice(i + 1).trim();
    if (k === "t" && /^\d{1,12}$/.test(v)) t = Number(v);
    else if (k === "v1" && /^[0-9a-f]{64}$/.test(v)) v1.push(v);
  }
  if (t === undefined || v1.length === 0) return { ok: false, reason: "malformed" };
  if (Math.abs(nowS - t) > toleranceS) return { ok: false, reason: "stale" };
  const want = Buffer.from(sign(secret, t, body), "hex");
  for (const s of v1) if (timingSafeEqual(want, Buffer.from(s, "hex"))) return { ok: true, t };
  return { ok: false, reason: "mismatch" };
}
