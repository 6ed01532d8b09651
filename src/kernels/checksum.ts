// CRC-32 and XXH3-128 of output bytes: the native addon's (PCLMULQDQ/VPCLMULQDQ CRC folding, xxHash's AVX2 XXH3),
// else node's zlib.crc32 and hash-wasm's XXH3 in WebAssembly. Both paths give the same values (test/checksum.test.ts);
// the native ones cost a few percent of the fallbacks' CPU per byte (0.2 s/GiB each for zlib and WebAssembly here).
import { crc32 as zlibCrc32 } from "node:zlib";
import type { IHasher } from "hash-wasm";
import { loadNative, type NativeAddon } from "./native.js";

type NativeChecksums = Required<Pick<NativeAddon, "crc32" | "xxh3New" | "xxh3Update" | "xxh3Digest">>;

let native: NativeChecksums | null | undefined;

function nativeChecksums(): NativeChecksums | null {
  if (native === undefined) {
    const a = process.env.CKPT_NATIVE === "0" ? undefined : loadNative();
    native = a?.crc32 && a.xxh3New && a.xxh3Update && a.xxh3Digest ? (a as NativeChecksums) : null;
  }
  return native;
}

/** Which implementation runs: "native" or "fallback" (zlib + WebAssembly). */
export function checksumImpl(): "native" | "fallback" {
  return nativeChecksums() ? "native" : "fallback";
}

/** zlib's crc32(data, initial), unsigned. */
export function crc32(data: Uint8Array, initial = 0): number {
  const n = nativeChecksums();
  return (n ? n.crc32(data, initial >>> 0) : zlibCrc32(data, initial)) >>> 0;
}

export interface Xxh128 {
  update(b: Uint8Array): void;
  /** Canonical lower-case hex (as xxhsum prints it); the state is released and cannot be updated again. */
  hex(): string;
}

// hash-wasm compiles its module once per thread and instantiates one per hasher: finished ones are reused. It is
// imported only when the addon lacks XXH3 (loading it costs each thread ~0.08 CPU s).
const wasmPool: IHasher[] = [];
const wasmXxh128 = async (): Promise<IHasher> => (await import("hash-wasm")).createXXHash128();

/** A fresh streaming XXH3-128 (seed 0). */
export async function createXxh128(): Promise<Xxh128> {
  const n = nativeChecksums();
  if (n) {
    const s = n.xxh3New();
    return { update: (b) => n.xxh3Update(s, b), hex: () => n.xxh3Digest(s) };
  }
  const h = wasmPool.pop() ?? (await wasmXxh128());
  h.init();
  return {
    update: (b) => void h.update(b),
    hex: () => {
      const hex = h.digest("hex");
      wasmPool.push(h);
      return hex;
    },
  };
}

/** The fallbacks, for differential tests. */
export const fallbackChecksums = {
  crc32: (data: Uint8Array, initial = 0): number => zlibCrc32(data, initial) >>> 0,
  async xxh128Hex(chunks: Uint8Array[]): Promise<string> {
    const h = await wasmXxh128();
    h.init();
    for (const c of chunks) h.update(c);
    return h.digest("hex");
  },
};
