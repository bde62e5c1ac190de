import type * as grpc from "@grpc/grpc-js";
import { HealthImplementation, service as healthServiceDefinition } from "grpc-health-check";

/** Fully-qualified name of the health service, as listed by reflection. */
export const HEALTH_SERVICE_NAME = "grpc.health.v1.Health";

/**
 * grpc.health.v1.Health (Check, Watch, List) on the gRPC port. "" is the whole server;
 * every hosted service is known by its fully-qualified name (dabba.order.v1.OrderService).
 * Everything starts NOT_SERVING; the host marks services SERVING once both listeners are up.
 */
export class HealthService {
  readonly #impl: HealthImplementation;
  readonly #names: Set<string>;
  readonly #watches = new Set<grpc.ServerWritableStream<unknown, unknown>>();

  constructor(serviceNames: readonly string[]) {
    this.#names = new Set(["", ...serviceNames]);
    this.#impl = new HealthImplementation(Object.fromEntries([...this.#names].map((n) => [n, "NOT_SERVING" as const])));
  }

  /** Sets one service ("" = overall) to SERVING or NOT_SERVING; Watch callers are notified. */
  setServing(name: string, serving: boolean): void {
    this.#names.add(name);
    this.#impl.setStatus(name, serving ? "SERVING" : "NOT_SERVING");
  }

  /** Marks the server and every service NOT_SERVING: the first step of a graceful shutdown. */
  shutdown(): void {
    for (const name of this.#names) this.#impl.setStatus(name, "NOT_SERVING");
  }

  /**
   * Ends open Watch streams (OK status). Called once the host has drained: a Watch never ends
   * by itself, so it would otherwise hold the connection and graceful shutdown open.
   */
  closeWatches(): void {
    for (const call of this.#watches) if (!call.cancelled && !call.writableEnded) call.end();
    this.#watches.clear();
  }

  addToServer(server: grpc.Server): void {
    const watches = this.#watches;
    // Wrap Watch on its way to the server so its streams can be ended at shutdown.
    const recorder = {
      addService(definition: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) {
        const watch = impl["watch"];
        const wrapped: grpc.UntypedServiceImplementation = { ...impl };
        if (watch) {
          wrapped["watch"] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
            watches.add(call);
            const drop = () => watches.delete(call);
            call.once("cancelled", drop);
            call.once("close", drop);
            call.once("finish", drop);
            (watch as (c: typeof call) => void)(call);
          };
        }
        server.addService(definition, wrapped);
      },
    };
    this.#impl.addToServer(recorder as unknown as Parameters<HealthImplementation["addToServer"]>[0]);
  }
}

/** Serialized FileDescriptorProtos of grpc/health/v1/health.proto, for server reflection. */
export function healthFileDescriptorProtos(): Uint8Array[] {
  const check = healthServiceDefinition["Check"];
  return check ? check.requestType.fileDescriptorProtos.map((b) => new Uint8Array(b)) : [];
}
