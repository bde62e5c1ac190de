/**
 * Benchmark dispatcher: `npm run bench -- <name>` imports ./<name>.ts and awaits its run().
 * Each benchmark prints one JSON line of results as its last line.
 */
import { readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));

async function main(): Promise<void> {
  const available = (await readdir(here)).filter((f) => f.endsWith(".ts") && f !== "run.ts").map((f) => f.slice(0, -3)).sort();
  const name = process.argv[2];
  if (!name || !available.includes(name)) {
    console.error(`usage: npm run bench -- <name>   (available: ${available.join(", ") || "none"})`);
    process.exit(2);
  }
  const mod = (await import(`./${name}.ts`)) as { run?: () => Promise<unknown> };
  if (typeof mod.run !== "function") throw new Error(`bench/${name}.ts does not export run()`);
  await mod.run();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
