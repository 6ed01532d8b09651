// Content digests for the manifest, the resume journal and `ckpt verify`.
//
// xxh128 (XXH3, 128-bit; default) or sha256. The manifest is not signed, so a cryptographic hash guards against
// nothing more than a strong checksum does (whoever can change the bytes can change the manifest): what the digest
// must do is catch corruption and tell outputs apart, which XXH3-128 does at ~34 GB/s per core natively (6 GB/s in the
// WebAssembly fallback) against ~2 GB/s for SHA-256 with SHA-NI. On 2 cores SHA-256 of every output byte was about half of a conversion's CPU time.
// `--digest sha256` is there for those whose tooling expects SHA-256.
import { createHash } from "node:crypto";
import { createXxh128 } from "../kernels/checksum.js";
import { CkptError } from "../errors.js";

export const DIGESTS = ["xxh128", "sha256"] as const;
export type DigestAlgorithm = (typeof DIGESTS)[number];
export const DEFAULT_DIGEST: DigestAlgorithm = "xxh128";

export interface Hasher {
  update(b: Uint8Array): Hasher;
  /** Lower-case hex; the hasher cannot be used afterwards. */
  hex(): string;
}

export function parseDigest(s: string | undefined): DigestAlgorithm {
  if (s === undefined) return DEFAULT_DIGEST;
  if ((DIGESTS as readonly string[]).includes(s)) return s as DigestAlgorithm;
  throw new CkptError("USAGE", `--digest ${s}: expected one of ${DIGESTS.join(", ")}`);
}

/** A fresh hasher. */
export async function createHasher(alg: DigestAlgorithm): Promise<Hasher> {
  if (alg === "sha256") {
    const h = createHash("sha256");
    const self: Hasher = { update: (b) => { h.update(b); return self; }, hex: () => h.digest("hex") };
    return self;
  }
  const h = await createXxh128();
  // The WebAssembly fallback returns a finished instance to a pool: a second use would corrupt another hasher.
  let live = true;
  const self: Hasher = {
    update: (b) => {
      if (!live) throw new Error("internal: xxh128 hasher used after hex()");
      h.update(b);
      return self;
    },
    hex: () => {
      if (!live) throw new Error("internal: xxh128 hasher used after hex()");
      live = false;
      return h.hex();
    },
  };
  return self;
}

/** One-shot digest of a buffer. */
export async function digestOf(alg: DigestAlgorithm, b: Uint8Array): Promise<string> {
  return (await createHasher(alg)).update(b).hex();
}
