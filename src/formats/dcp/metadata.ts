// DCP `.metadata`: encoder (protocol-2 grammar of docs/dcp-format.md §5) and decoder (protocols 2–5 as
// PyTorch writes them, §3–§6) to and from a plain model.
import { type DType, TORCH_DTYPE, dtypeFromTorch } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import {
  PyDict, type PyObj, type PyValue, isCall, isGlobal, isObj, isTuple, parsePickle,
} from "../pickle/reader.js";
import { PickleWriter } from "../pickle/writer.js";

export const MD = "torch.distributed.checkpoint.metadata";
export const FS = "torch.distributed.checkpoint.filesystem";

export interface DcpChunk { offsets: number[]; sizes: number[] }
export interface DcpTensorMeta { dtype: DType; size: number[]; chunks: DcpChunk[] }
export interface DcpStorageEntry {
  fqn: string;
  /** Chunk offsets; undefined for BYTE_IO values. */
  offsets?: number[];
  index?: number;
  file: string;
  offset: number;
  length: number;
}
export interface DcpMetadata {
  tensors: Map<string, DcpTensorMeta>;
  bytes: Set<string>;
  plannerData: Map<string, string[]>;
  storage: DcpStorageEntry[];
}

/** A storage path must be a plain file name inside the checkpoint folder. */
export function isPlainFileName(name: string): boolean {
  return name.length > 0 && name !== "." && name !== ".." && !/[/\\\0]/.test(name);
}

// ---------------------------------------------------------------------------------------------------------------
// encoder

function size(w: PickleWriter, dims: readonly number[]): void {
  w.reduce("torch", "Size", 1, () => {
    w.tuple(dims.length, () => dims.forEach((d) => w.int(d)));
  });
}

function props(w: PickleWriter, dtype: DType): void {
  const name = TORCH_DTYPE[dtype];
  if (!name) throw new CkptError("DTYPE", `dtype ${dtype} has no PyTorch equivalent and cannot be saved in DCP`);
  w.newobj(MD, "TensorProperties");
  w.tuple(5, () => {
    w.global("torch", name);
    w.reduce("torch.serialization", "_get_layout", 1, () => w.str("torch.strided"));
    w.bool(false);
    w.reduce(MD, "_MEM_FORMAT_ENCODING", 1, () => w.int(0));
    w.bool(false);
  });
  w.build();
}

function validate(md: DcpMetadata): void {
  for (const [fqn, t] of md.tensors) {
    for (const c of t.chunks) {
      if (c.offsets.length !== t.size.length || c.sizes.length !== t.size.length) {
        throw new CkptError("DCP", `chunk rank does not match the tensor's ${t.size.length} dims`, { tensor: fqn });
      }
    }
  }
  for (const s of md.storage) {
    if (!isPlainFileName(s.file)) throw new CkptError("DCP", `storage path '${s.file}' is not a plain file name`, { tensor: s.fqn });
  }
}

/** `.metadata` bytes, exactly the §5 grammar. State-dict order: tensors, then BYTE_IO keys. */
export function encodeDcpMetadata(md: DcpMetadata): Buffer {
  validate(md);
  const w = new PickleWriter().proto(2);
  w.obj(MD, "Metadata", () => {
    w.str("state_dict_metadata").dict(() => {
      for (const [fqn, t] of md.tensors) {
        w.str(fqn).obj(MD, "TensorStorageMetadata", () => {
          w.str("properties");
          props(w, t.dtype);
          w.str("size");
          size(w, t.size);
          w.str("chunks").list(() => {
            for (const c of t.chunks) {
              w.obj(MD, "ChunkStorageMetadata", () => {
                w.str("offsets");
                size(w, c.offsets);
                w.str("sizes");
                size(w, c.sizes);
              });
            }
          });
        });
      }
      for (const fqn of md.bytes) w.str(fqn).newobj(MD, "BytesStorageMetadata");
    });
    w.str("planner_data").dict(() => {
      const emit = (k: string, path: string[]): void => {
        w.str(k).tuple(path.length, () => path.forEach((p) => w.str(p)));
      };
      for (const [k, path] of md.plannerData) emit(k, path);
      for (const k of [...md.tensors.keys(), ...md.bytes]) if (!md.plannerData.has(k)) emit(k, [k]);
    });
    w.str("storage_data").dict(() => {
      for (const s of md.storage) {
        w.obj(MD, "MetadataIndex", () => {
          w.str("fqn").str(s.fqn);
          w.str("index");
          if (s.index === undefined) w.none();
          else w.int(s.index);
          if (s.offsets) {
            w.str("offset");
            size(w, s.offsets);
          }
        });
        w.obj(FS, "_StorageInfo", () => {
          w.str("relative_path").str(s.file);
          w.str("offset").int(s.offset);
          w.str("length").int(s.length);
        });
      }
    });
    w.str("storage_meta").none();
    w.str("version").str("1.0.0");
  });
  return w.stop().bytes();
}

// ---------------------------------------------------------------------------------------------------------------
// decoder

const DTYPE_ALIAS: Record<string, string> = {
  float: "float32", double: "float64", half: "float16", long: "int64", int: "int32", short: "int16",
  cfloat: "complex64", cdouble: "complex128",
};

export function decodeDcpMetadata(buf: Buffer, file: string): DcpMetadata {
  const fail = (msg: string, tensor?: string): never => {
    throw new CkptError("DCP", msg, { file, tensor });
  };
  const root = parsePickle(buf, { file });
  const state = (o: PyValue | undefined, cls: string, what: string): PyDict => {
    if (!isObj(o) || !o.$obj.endsWith(`.${cls}`)) fail(`${what}: expected a ${cls} object`);
    const s = (o as PyObj).state;
    if (s instanceof PyDict) return s;
    // (dict_state, slot_state) form
    if (isTuple(s) && s.$tuple.length === 2) {
      const merged = new PyDict();
      for (const part of s.$tuple) if (part instanceof PyDict) for (const [k, v] of part) merged.set(k, v);
      return merged;
    }
    if (s === undefined || s === null) return new PyDict();
    return fail(`${what}: unexpected ${cls} state`);
  };
  const ints = (v: PyValue | undefined, what: string): number[] => {
    let items: PyValue[] | undefined;
    if (isCall(v, "torch.Size") && v.args.length === 1 && isTuple(v.args[0])) items = v.args[0].$tuple;
    else if (isTuple(v)) items = v.$tuple;
    else if (Array.isArray(v)) items = v;
    if (!items) return fail(`${what}: expected torch.Size`);
    return items.map((x) => {
      if (typeof x !== "number" || !Number.isSafeInteger(x) || x < 0) fail(`${what}: bad dimension ${String(x)}`);
      return x as number;
    });
  };

  const top = state(root, "Metadata", "root");
  const sdm = top.get("state_dict_metadata");
  if (!(sdm instanceof PyDict)) return fail("state_dict_metadata is missing or not a dict");
  const tensors = new Map<string, DcpTensorMeta>();
  const bytes = new Set<string>();
  for (const [k, v] of sdm) {
    if (typeof k !== "string") fail("state_dict_metadata has a non-string key");
    const fqn = k as string;
    if (isObj(v) && v.$obj.endsWith(".BytesStorageMetadata")) {
      bytes.add(fqn);
      continue;
    }
    const t = state(v, "TensorStorageMetadata", `'${fqn}'`);
    const p = t.get("properties");
    let dtypeV: PyValue | undefined;
    if (isObj(p) && p.$obj.endsWith(".TensorProperties")) {
      if (isTuple(p.state)) {
        if (p.state.$tuple.length < 5) fail("TensorProperties state has fewer than 5 items", fqn);
        dtypeV = p.state.$tuple[0];
      } else if (p.state instanceof PyDict) dtypeV = p.state.get("dtype");
    }
    if (!isGlobal(dtypeV) || !dtypeV.$global.startsWith("torch.")) return fail("tensor properties without a torch dtype", fqn);
    const tname = (dtypeV as { $global: string }).$global.slice(6);
    const dtype = dtypeFromTorch(DTYPE_ALIAS[tname] ?? tname);
    if (!dtype) return fail(`unsupported dtype torch.${tname}`, fqn);
    const sz = ints(t.get("size"), `'${fqn}' size`);
    const ch = t.get("chunks");
    if (!Array.isArray(ch)) return fail("chunks is not a list", fqn);
    const chunks = (ch as PyValue[]).map((c, i) => {
      const cs = state(c, "ChunkStorageMetadata", `'${fqn}' chunk ${i}`);
      const offsets = ints(cs.get("offsets"), `'${fqn}' chunk ${i} offsets`);
      const sizes = ints(cs.get("sizes"), `'${fqn}' chunk ${i} sizes`);
      if (offsets.length !== sz.length || sizes.length !== sz.length) fail(`chunk ${i} rank differs from the tensor's`, fqn);
      offsets.forEach((o, d) => {
        if (o + sizes[d]! > sz[d]!) fail(`chunk ${i} [${offsets}]+[${sizes}] exceeds size [${sz}]`, fqn);
      });
      return { offsets, sizes };
    });
    tensors.set(fqn, { dtype, size: sz, chunks });
  }

  const plannerData = new Map<string, string[]>();
  const pd = top.get("planner_data");
  if (pd instanceof PyDict) {
    for (const [k, v] of pd) {
      if (typeof k !== "string") continue;
      const items = isTuple(v) ? v.$tuple : Array.isArray(v) ? v : undefined;
      if (!items) continue;
      plannerData.set(k, items.map((x) => String(x)));
    }
  }

  const sd = top.get("storage_data");
  if (!(sd instanceof PyDict)) return fail("storage_data is missing or not a dict");
  const storage: DcpStorageEntry[] = [];
  for (const [k, v] of sd) {
    const mi = state(k, "MetadataIndex", "storage_data key");
    const fqn = mi.get("fqn");
    if (typeof fqn !== "string") return fail("MetadataIndex without fqn");
    const off = mi.get("offset");
    const idx = mi.get("index");
    const si = state(v, "_StorageInfo", `storage of '${fqn}'`);
    const rp = si.get("relative_path");
    const o = si.get("offset");
    const l = si.get("length");
    if (typeof rp !== "string" || !isPlainFileName(rp)) return fail(`storage path '${String(rp)}' is not a plain file name`, fqn as string);
    if (typeof o !== "number" || !Number.isSafeInteger(o) || o < 0) return fail("bad storage offset", fqn as string);
    if (typeof l !== "number" || !Number.isSafeInteger(l) || l < 0) return fail("bad storage length", fqn as string);
    const td = si.get("transform_descriptors");
    const tdItems = td === undefined || td === null ? [] : Array.isArray(td) ? td : isTuple(td) ? td.$tuple : [td];
    if (tdItems.length) return fail(`unsupported storage transform ${tdItems.map(String).join(", ")}`, fqn as string);
    const e: DcpStorageEntry = { fqn: fqn as string, file: rp as string, offset: o as number, length: l as number };
    if (off !== undefined && off !== null) e.offsets = ints(off, `'${fqn}' storage offset`);
    if (typeof idx === "number") e.index = idx;
    storage.push(e);
  }
  return { tensors, bytes, plannerData, storage };
}
