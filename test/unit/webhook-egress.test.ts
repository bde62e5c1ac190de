import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fetch } from "undici";
import { ConnectError, Code } from "@connectrpc/connect";
import { guardedLookup, isPublicAddress, refusedUrlReason, webhookDispatcher } from "../../services/notifications/egress.js";
import { validateWebhookUrl } from "../../services/tracking/handlers/register-webhook.js";

describe("webhook egress guard", () => {
  it("tells public addresses from private, loopback, link-local and reserved ones", () => {
    for (const ip of ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "172.32.0.1", "100.128.0.1"]) {
      assert.equal(isPublicAddress(ip), true, ip);
    }
    for (const ip of [
      "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
      "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00::1", "fc12::3", "ff02::1", "::ffff:127.0.0.1",
      "::ffff:10.0.0.1", "not an ip",
    ]) {
      assert.equal(isPublicAddress(ip), false, ip);
    }
  });

  it("refuses webhook URLs naming a private address or localhost at registration, unless allowed", () => {
    for (const url of ["http://127.0.0.1:8080/x", "http://localhost/x", "https://api.localhost/x", "http://169.254.169.254/latest/meta-data", "http://[::1]:9000/", "http://10.0.0.5/"]) {
      assert.ok(refusedUrlReason(new URL(url)), url);
      assert.throws(() => validateWebhookUrl(url, false), (e: ConnectError) => e.code === Code.InvalidArgument && /url.*public addresses only/.test(e.message), url);
      assert.equal(validateWebhookUrl(url, true), new URL(url).toString());
    }
    for (const url of ["https://hooks.example.com/dabba", "http://8.8.8.8/x"]) {
      assert.equal(refusedUrlReason(new URL(url)), undefined, url);
      assert.equal(validateWebhookUrl(url, false), new URL(url).toString());
    }
  });

  it("fails the lookup of a name that resolves to a private address", async () => {
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => guardedLookup("localhost", {}, (e) => resolve(e)));
    assert.ok(err, "localhost must be refused");
    assert.match(err.message, /localhost resolves to the private or reserved address/);
  });

  describe("the delivery dispatcher", () => {
    let server: Server;
    let hits = 0;
    let port = 0;
    before(async () => {
      server = createServer((_req, res) => {
        hits++;
        res.end("ok");
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      port = (server.address() as AddressInfo).port;
    });
    after(() => new Promise<void>((r) => server.close(() => r())));

    it("never connects to a host name resolving to a private address, and does when allowed", async () => {
      const guarded = webhookDispatcher(false);
      const open = webhookDispatcher(true);
      try {
        await assert.rejects(fetch(`http://localhost:${port}/hook`, { method: "POST", body: "{}", dispatcher: guarded }), (e: Error & { cause?: { code?: string } }) => {
          assert.equal(e.cause?.code, "EGRESS_REFUSED");
          return true;
        });
        assert.equal(hits, 0, "the receiver saw no request");
        const res = await fetch(`http://localhost:${port}/hook`, { method: "POST", body: "{}", dispatcher: open });
        assert.equal(res.status, 200);
        await res.text();
        assert.equal(hits, 1);
      } finally {
        await guarded.close();
        await open.close();
      }
    });
  });
});
