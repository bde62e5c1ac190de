import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { BlockList, isIP } from "node:net";
import { Agent } from "undici";

/**
 * Where webhooks may not go: addresses inside the platform's own network. A webhook URL is chosen
 * by a restaurant or partner, so without this a registration pointing at 127.0.0.1, a cloud
 * metadata address (169.254.169.254) or a cluster-internal service would make dabba POST into its
 * own network (server-side request forgery). The check runs twice: on the URL at registration
 * (IP literals and "localhost") and on every address the host resolves to when connecting (the
 * name may resolve elsewhere later: DNS rebinding), so a refused address is never connected to.
 * WEBHOOK_ALLOW_PRIVATE_NETWORKS=true turns it off (local development, receivers inside the cluster).
 */
const PRIVATE = new BlockList();
for (const [net, bits] of [
  ["0.0.0.0", 8], // "this" network
  ["10.0.0.0", 8], // private
  ["100.64.0.0", 10], // carrier-grade NAT
  ["127.0.0.0", 8], // loopback
  ["169.254.0.0", 16], // link-local, cloud metadata
  ["172.16.0.0", 12], // private
  ["192.0.0.0", 24], // IETF protocol assignments
  ["192.168.0.0", 16], // private
  ["198.18.0.0", 15], // benchmarking
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, broadcast
] as const) {
  PRIVATE.addSubnet(net, bits, "ipv4");
}
for (const [net, bits] of [
  ["::", 127], // unspecified and loopback
  ["fc00::", 7], // unique local
  ["fe80::", 10], // link-local
  ["ff00::", 8], // multicast
] as const) {
  PRIVATE.addSubnet(net, bits, "ipv6");
}

/** Whether an IP address (v4 or v6, IPv4-mapped v6 included) is one a webhook may be sent to. */
export function isPublicAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (mapped) return isPublicAddress(mapped[1]);
    return !PRIVATE.check(ip, "ipv6");
  }
  return !PRIVATE.check(ip, "ipv4");
}

/** The URL's host without IPv6 brackets. */
function hostOf(url: URL): string {
  return url.hostname.replace(/^\[|\]$/g, "");
}

/**
 * Why a webhook URL may not be registered (an IP literal or localhost name inside the platform's
 * network), or undefined when it may. Names are checked again when a delivery connects.
 */
export function refusedUrlReason(url: URL): string | undefined {
  const host = hostOf(url).toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return `points to ${host}`;
  if (isIP(host) !== 0 && !isPublicAddress(host)) return `points to the private or reserved address ${host}`;
  return undefined;
}

/** The error a refused connection fails with (the delivery log shows its message). */
export class EgressRefused extends Error {
  readonly code = "EGRESS_REFUSED";
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `lookup` for net/tls connect that resolves like dns.lookup and fails when any address the
 * name resolves to is private, so the connection is never opened.
 */
export function guardedLookup(hostname: string, options: LookupOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err, []);
    const bad = addresses.find((a) => !isPublicAddress(a.address));
    if (bad) return callback(new EgressRefused(`${hostname} resolves to the private or reserved address ${bad.address}`), []);
    if (options.all) return callback(null, addresses);
    const first = addresses[0];
    if (!first) return callback(Object.assign(new Error(`${hostname} did not resolve`), { code: "ENOTFOUND" }), []);
    callback(null, first.address, first.family);
  });
}

/** The HTTP dispatcher webhook deliveries use: connections only to public addresses unless allowed. */
export function webhookDispatcher(allowPrivateNetworks: boolean): Agent {
  return new Agent(allowPrivateNetworks ? {} : { connect: { lookup: guardedLookup } });
}

/** Why a delivery to this URL is refused before connecting (an IP literal inside the network), or undefined. */
export function refusedTarget(url: string, allowPrivateNetworks: boolean): string | undefined {
  if (allowPrivateNetworks) return undefined;
  return refusedUrlReason(new URL(url));
}
