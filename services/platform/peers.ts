import { Code, ConnectError, createRouterTransport, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { bearer } from "./auth.js";
import { createLocalTransport } from "./local-transport.js";
import type { ServiceModule, ServiceName } from "./service.js";

export interface PeerOptions {
  /** Modules hosted in this process; their peers are reached in-process. */
  hosted: () => ReadonlyMap<ServiceName, ServiceModule>;
  /** host:port of peers hosted elsewhere (from <SERVICE>_ADDR). */
  addrs: Partial<Record<ServiceName, string>>;
  /** Server-side interceptors (auth, logging) that in-process calls go through, exactly as remote ones do. */
  serverInterceptors: Interceptor[];
  /** The service token attached to every call between services. */
  serviceToken: () => Promise<string>;
  maxMessageBytes: number;
}

/**
 * Chooses, per peer, the transport services use to call each other through generated clients:
 * in-process (local-transport.ts: a direct call into the co-hosted implementation through the
 * same interceptors as the listeners, no serialisation) when the peer is hosted here, gRPC over
 * HTTP/2 to <SERVICE>_ADDR otherwise.
 * Transports are made on first use so modules can be created before their peers.
 */
export function createPeers(opts: PeerOptions): (name: ServiceName) => Transport {
  const cache = new Map<ServiceName, Transport>();
  const clientInterceptors = [bearer(opts.serviceToken)];
  const make = (name: ServiceName): Transport => {
    const local = opts.hosted().get(name);
    if (local) {
      return createLocalTransport({
        desc: local.desc,
        impl: local.impl,
        serverInterceptors: opts.serverInterceptors,
        clientInterceptors,
        // Client and bidi streams (no service calls one in-process today) keep the full protocol.
        fallback: () =>
          createRouterTransport(({ service }) => service(local.desc, local.impl), {
            router: { interceptors: opts.serverInterceptors, readMaxBytes: opts.maxMessageBytes },
            transport: { interceptors: clientInterceptors },
          }),
      });
    }
    const addr = opts.addrs[name];
    if (!addr) {
      throw new ConnectError(
        `${name} service is not hosted in this process and ${name.toUpperCase()}_ADDR is not set`,
        Code.Unavailable,
      );
    }
    return createGrpcTransport({
      baseUrl: addr.includes("://") ? addr : `http://${addr}`,
      interceptors: clientInterceptors,
      readMaxBytes: opts.maxMessageBytes,
    });
  };
  const get = (name: ServiceName): Transport => {
    let t = cache.get(name);
    if (!t) cache.set(name, (t = make(name)));
    return t;
  };
  // One lazy handle per peer; each call goes straight to the made transport (no rest/spread arrays per call).
  const handles = new Map<ServiceName, Transport>();
  return (name) => {
    let h = handles.get(name);
    if (!h) {
      h = {
        unary: (method, signal, timeoutMs, header, input, contextValues) => get(name).unary(method, signal, timeoutMs, header, input, contextValues),
        stream: (method, signal, timeoutMs, header, input, contextValues) => get(name).stream(method, signal, timeoutMs, header, input, contextValues),
      };
      handles.set(name, h);
    }
    return h;
  };
}

/** A token source that mints service tokens and refreshes them well before they expire. */
export function cachedToken(mint: () => Promise<string>, ttlSeconds: number): () => Promise<string> {
  let token: Promise<string> | undefined;
  let expiresAt = 0;
  return () => {
    const now = Date.now();
    if (!token || now > expiresAt - (ttlSeconds * 1000) / 2) {
      token = mint();
      expiresAt = now + ttlSeconds * 1000;
      token.catch(() => (token = undefined));
    }
    return token;
  };
}
