// Builds the optional native addon during `npm install` (and `npm run build:native`). A failed build is not
// fatal: ckpt falls back to its TypeScript kernels (one warning at run time), so an install never breaks on a
// missing compiler. When nvcc exists (and CKPT_CUDA != 0) it also builds native/build/Release/libckpt_cuda.so,
// the optional `--device cuda` kernels; a failed CUDA build only loses that option.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const native = join(root, "native");

function main() {
  if (process.env.CKPT_NATIVE === "0") { console.log("ckpt: CKPT_NATIVE=0, skipping the native addon"); return; }
  if (!existsSync(join(native, "binding.gyp"))) return;
  const require = createRequire(import.meta.url);
  let gyp;
  try { gyp = require.resolve("node-gyp/bin/node-gyp.js"); } catch { console.warn("ckpt: node-gyp not installed yet; native addon skipped"); return; }
  const args = [gyp, "rebuild", `--directory=${native}`];
  // Use the headers installed next to this node (distro packages, official tarballs) instead of downloading them.
  if (!process.env.npm_config_nodedir) {
    const nodedir = resolve(dirname(process.execPath), "..");
    if (existsSync(join(nodedir, "include", "node", "node_api.h")) && existsSync(join(nodedir, "include", "node", "common.gypi"))) {
      args.push(`--nodedir=${nodedir}`);
    }
  }
  const r = spawnSync(process.execPath, args, { stdio: "inherit", cwd: root });
  if (r.status !== 0) { console.warn("ckpt: native addon failed to build; the TypeScript kernels will be used (slower)"); return; }
  buildCuda();
}

function buildCuda() {
  if (process.env.CKPT_CUDA === "0") return;
  const candidates = [process.env.NVCC, "nvcc", "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"].filter(Boolean);
  const nvcc = candidates.find((c) => spawnSync(c, ["--version"], { stdio: "ignore" }).status === 0);
  if (!nvcc) return;
  const out = join(native, "build", "Release");
  mkdirSync(out, { recursive: true });
  const archs = (process.env.CKPT_CUDA_ARCHS ?? "75,80,90").split(",").map((s) => s.trim()).filter(Boolean);
  const gencode = archs.flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]);
  // PTX of the lowest arch too, so newer GPUs can JIT it.
  if (archs.length) gencode.push("-gencode", `arch=compute_${archs[0]},code=compute_${archs[0]}`);
  const args = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-fmad=false",
    "-I", join(native, "include"), ...gencode, "-o", join(out, "libckpt_cuda.so"), join(native, "cuda", "ckpt_cuda.cu")];
  console.log(`ckpt: building CUDA kernels with ${nvcc}`);
  const r = spawnSync(nvcc, args, { stdio: "inherit", cwd: root });
  if (r.status !== 0) console.warn("ckpt: CUDA kernels failed to build; --device cuda will be unavailable (CPU kernels unaffected)");
}

try { main(); } catch (e) { console.warn(`ckpt: native build skipped (${e && e.message})`); }
process.exit(0);
