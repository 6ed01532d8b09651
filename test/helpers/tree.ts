// Byte-identity of whole output folders: relative path → SHA-256 of every file (dot files included).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

export function tree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else out.set(r, createHash("sha256").update(readFileSync(p)).digest("hex"));
    }
  };
  walk(dir, "");
  return out;
}

export function assertSameTree(got: string, want: string): void {
  const a = tree(got);
  const b = tree(want);
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), "the same files");
  for (const [k, v] of b) assert.equal(a.get(k), v, `${k} is byte-identical`);
}
