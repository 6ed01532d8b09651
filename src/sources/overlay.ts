// A source that also reads the files of a second one under a prefix: a plan whose leaves come from two checkpoints
// (--to hf --requantize reads the TorchTitan checkpoint and, for its reference encoding, the HF source) is executed
// against one Source. Everything else (id, listing, closing) is the base source's.
import type { Source } from "./types.js";

export function withPrefixedSource(base: Source, prefix: string, extra: Source): Source {
  const own = (f: string): string | undefined => (f.startsWith(prefix) ? f.slice(prefix.length) : undefined);
  return {
    id: base.id,
    kind: base.kind,
    get revision() { return base.revision; },
    files: () => base.files(),
    localPath: (f) => { const x = own(f); return x === undefined ? base.localPath(f) : extra.localPath(x); },
    size: (f) => { const x = own(f); return x === undefined ? base.size(f) : extra.size(x); },
    read: (f, offset, length) => { const x = own(f); return x === undefined ? base.read(f, offset, length) : extra.read(x, offset, length); },
    readText: (f) => base.readText(f),
    close: () => base.close(),
  };
}
