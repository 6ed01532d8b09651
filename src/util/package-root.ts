// Where the installed package lives: mappings/ and the native addon are found relative to it.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let root: string | undefined;

/** The package root: the nearest folder above this module holding package.json (works from src/ and dist/src/). */
export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error(`ckpt: no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}
