// Copies the interop Python helpers (test/interop/py, not compiled) into a PyTorch root's temp folder.
import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function pySourceDir(): string {
  // compiled to dist/test/interop/; the .py files stay in test/interop/py
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
  return join(dir, "test", "interop", "py");
}

/** Copies every helper script into `hostDir/py` and returns its guest path prefix. */
export function installPy(hostDir: string, guestDir: string): string {
  const src = pySourceDir();
  mkdirSync(join(hostDir, "py"), { recursive: true });
  for (const f of readdirSync(src)) if (f.endsWith(".py")) copyFileSync(join(src, f), join(hostDir, "py", f));
  return `${guestDir}/py`;
}
