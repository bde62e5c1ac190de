import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { loadAll } from "js-yaml";
import { loadConfig } from "../../services/platform/config.js";
import { SERVICE_NAMES } from "../../services/platform/service.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const read = (p: string) => readFileSync(`${root}${p}`, "utf8");

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = any;

function docs(text: string): Doc[] {
  return loadAll(text).filter((d): d is Doc => d !== null && d !== undefined);
}

/** The manifests k8s/base/kustomization.yaml lists, parsed. */
function baseDocs(): Doc[] {
  const k = docs(read("k8s/base/kustomization.yaml"))[0];
  return (k.resources as string[]).flatMap((r) => docs(read(`k8s/base/${r}`)));
}

/** Every environment variable name services/platform/config.ts reads. */
function knownEnv(): Set<string> {
  const src = read("services/platform/config.ts");
  const names = new Set<string>(["SERVICES", ...SERVICE_NAMES.map((n) => `${n.toUpperCase()}_ADDR`)]);
  for (const m of src.matchAll(/env\.([A-Z][A-Z0-9_]*)/g)) names.add(m[1]!);
  for (const m of src.matchAll(/\(env, "([A-Z][A-Z0-9_]*)"/g)) names.add(m[1]!);
  return names;
}

function kustomize(dir: string): Doc[] | undefined {
  try {
    return docs(execFileSync("kubectl", ["kustomize", `${root}${dir}`], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

describe("Kubernetes manifests (k8s/)", () => {
  const all = baseDocs();
  const of = (kind: string) => all.filter((d) => d.kind === kind);
  const config = of("ConfigMap").find((c) => c.metadata.name === "dabba-config");

  it("run every service as its own Deployment and Service, from one image, on the configured ports", () => {
    assert.deepEqual(of("Deployment").map((d) => d.metadata.name).sort(), [...SERVICE_NAMES].sort());
    for (const name of SERVICE_NAMES) {
      const dep = of("Deployment").find((d) => d.metadata.name === name);
      const pod = dep.spec.template;
      assert.deepEqual(dep.spec.selector.matchLabels, pod.metadata.labels, `${name}: selector matches the pod`);
      const [c] = pod.spec.containers;
      assert.equal(c.image, "dabba", `${name}: the one image`);
      assert.deepEqual(c.env, [{ name: "SERVICES", value: name }]);
      assert.deepEqual(c.envFrom.map((e: Doc) => e.configMapRef?.name ?? e.secretRef?.name), ["dabba-config", "dabba-secrets"]);
      assert.deepEqual(c.ports.map((p: Doc) => [p.name, p.containerPort]), [["grpc", 8080], ["web", 8081]]);
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) assert.equal(c[probe].grpc.port, 8080, `${name}: ${probe} on grpc.health.v1`);
      assert.ok(pod.spec.terminationGracePeriodSeconds * 1000 > Number(config.data.SHUTDOWN_GRACE_MS), `${name}: the drain fits the grace period`);
      const svc = of("Service").find((s) => s.metadata.name === name);
      assert.deepEqual(svc.spec.selector, pod.metadata.labels, `${name}: the Service selects its pods`);
      assert.deepEqual(svc.spec.ports.map((p: Doc) => [p.name, p.port, p.targetPort]), [["grpc", 8080, "grpc"], ["web", 8081, "web"]]);
    }
  });

  it("set only settings dabba reads, with peer addresses at the Services, and a config each service starts with", () => {
    const known = knownEnv();
    const unknown = Object.keys(config.data).filter((k) => !known.has(k));
    assert.deepEqual(unknown, [], "ConfigMap keys that no code reads");
    const services = new Set(of("Service").map((s) => s.metadata.name));
    for (const name of SERVICE_NAMES) assert.equal(config.data[`${name.toUpperCase()}_ADDR`], `${name}:8080`);
    assert.ok([...services].every((s) => SERVICE_NAMES.includes(s)));
    // What a pod's environment would be (the Secret's keys with stand-in values).
    const secrets = { DATABASE_URL: "postgres://dabba@db:5432/dabba", REDIS_URL: "redis://redis:6379", JWT_SECRET: "x".repeat(48), WEBHOOK_SECRET_KEY: "ab".repeat(32) };
    for (const name of SERVICE_NAMES) {
      const c = loadConfig({ ...config.data, ...secrets, SERVICES: name, PORT: "8080", WEB_PORT: "8081" });
      assert.deepEqual(c.services, [name]);
      assert.deepEqual(Object.keys(c.peerAddrs).sort(), [...SERVICE_NAMES].sort());
    }
  });

  it("render with kustomize: the base, and production with replicas, autoscaling and disruption budgets", function () {
    const base = kustomize("k8s/base");
    if (!base) this.skip(); // kubectl is not installed here
    assert.equal(base!.filter((d) => d.kind === "Deployment").length, SERVICE_NAMES.length);
    const prod = kustomize("k8s/overlays/production")!;
    const deps = prod.filter((d) => d.kind === "Deployment");
    assert.equal(deps.length, SERVICE_NAMES.length);
    assert.ok(deps.every((d) => d.spec.replicas >= 2 && d.spec.template.spec.containers[0].image.startsWith("registry.example.com/dabba:")));
    assert.deepEqual(prod.filter((d) => d.kind === "HorizontalPodAutoscaler").map((h) => h.spec.scaleTargetRef.name).sort(), ["location", "tracking"]);
    assert.deepEqual(prod.filter((d) => d.kind === "PodDisruptionBudget").map((p) => p.metadata.name).sort(), [...SERVICE_NAMES].sort());
    assert.ok(prod.every((d) => d.metadata.labels?.["app.kubernetes.io/part-of"] === "dabba"));
  });
});
