// The catalog: every tensor's name, dtype, global shape and where its bytes are, from headers only.
import type { DType } from "./dtypes.js";
import type { Source } from "./sources/types.js";

/** A stored box of a tensor: `sizes` elements at global `offsets`, row-major contiguous bytes at `byteOffset`. */
export interface StoredPiece {
  offsets: number[];
  sizes: number[];
  file: string;
  /** Absolute byte offset of the first element in `file`. */
  byteOffset: number;
  byteLength: number;
}

export interface CatalogTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** One piece for safetensors (offsets all 0); one per chunk for DCP. Pieces tile the tensor. */
  pieces: StoredPiece[];
}

export type CatalogFormat = "safetensors" | "dcp";

export interface Catalog {
  source: Source;
  format: CatalogFormat;
  tensors: Map<string, CatalogTensor>;
  /** Parsed config.json when the source has one (HF checkpoints). */
  config?: Record<string, unknown>;
  /** File → its safetensors `__metadata__` (empty for DCP). */
  fileMetadata: Map<string, Record<string, string>>;
}
