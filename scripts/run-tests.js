// Runs every compiled test file under dist/test (or the folders given) with node's test runner.
// Listing files explicitly works the same on Node 20 (directory args) and Node 22+ (glob args).
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

const roots = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const flags = process.argv.slice(2).filter((a) => a.startsWith("-"));
const files = [];
const walk = (d) => {
  for (const f of readdirSync(d).sort()) {
    const p = join(d, f);
    if (statSync(p).isDirectory()) { if (f !== "bench") walk(p); }
    else if (f.endsWith(".test.js")) files.push(p);
  }
};
for (const r of roots.length ? roots : ["dist/test"]) walk(r);
if (files.length === 0) { console.error("run-tests: no test files found"); process.exit(1); }
const r = spawnSync(process.execPath, ["--test", ...flags, ...files], { stdio: "inherit" });
process.exit(r.status ?? 1);
