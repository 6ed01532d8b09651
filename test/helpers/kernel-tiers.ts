// Every kernel implementation this machine can run: the TypeScript reference, then each native ISA tier up to the
// best the CPU has (select() switches the addon to it), for differential tests.
import { referenceKernels, type Kernels } from "../../src/kernels/index.js";
import { loadNative, nativeKernelsFrom } from "../../src/kernels/native.js";

export function kernelImpls(): { label: string; k: Kernels; select(): void }[] {
  const out = [{ label: "typescript", k: referenceKernels, select: () => {} }];
  const addon = loadNative();
  if (!addon) return out;
  const tiers = ["scalar", "avx2", "avx512"];
  const k = nativeKernelsFrom(addon);
  for (const isa of tiers.slice(0, tiers.indexOf(addon.bestIsa()) + 1)) out.push({ label: `native(${isa})`, k, select: () => void addon.setIsa(isa) });
  return out;
}
