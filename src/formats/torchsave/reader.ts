// torch.save archive reader (docs/dcp-format.md §7–8): only the zip directory, the small records and
// `data.pkl` are read, never the tensor data. `data.pkl` goes through the restricted pickle parser.
import { type DType, dtypeFromTorch, elementSize, numelOf } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import {
  type PickleOptions, type PyValue, isCall, isGlobal, isPersId, isTuple, parsePickle,
} from "../pickle/reader.js";
import { LEGACY_STORAGE_CLASS } from "./writer.js";
import { type ReadAt, WindowedReader, type ZipDirectory, type ZipEntry, readZipDirectory } from "./zip.js";

export type { ReadAt } from "./zip.js";

const MAX_PKL = 64 * 1024 * 1024;

export interface TorchArchive {
  folder: string;
  dir: ZipDirectory;
  /** Entry for `<folder>/<record>`, or undefined. */
  record(name: string): ZipEntry | undefined;
  version: number;
  pickle: Buffer;
  reader: WindowedReader;
}

export async function openTorchArchive(read: ReadAt, blobLength: number, label: string): Promise<TorchArchive> {
  const fail = (msg: string): never => {
    throw new CkptError("ZIP", msg, { file: label });
  };
  const reader = new WindowedReader(read, blobLength, label);
  const dir = await readZipDirectory(reader, label);
  if (dir.entries.length === 0) fail("empty archive");
  const first = dir.entries[0]!.name;
  const slash = first.indexOf("/");
  if (slash <= 0) fail(`file in archive is not in a subdirectory: '${first}'`);
  const folder = first.slice(0, slash);
  const record = (n: string): ZipEntry | undefined => dir.byName.get(`${folder}/${n}`);
  if (record("constants.pkl")) fail("archive is a TorchScript module (constants.pkl), not a torch.save file");
  const ver = record("version") ?? record(".data/version");
  if (!ver) fail("archive has no 'version' record");
  if (ver!.size > 64) fail("archive 'version' record is too large");
  const vtext = (await reader.at(ver!.dataOffset, ver!.size)).toString("latin1").trim();
  const version = /^\d+$/.test(vtext) ? Number(vtext) : NaN;
  if (!(version >= 1 && version <= 10)) fail(`unsupported archive version '${vtext}'`);
  const bo = record("byteorder");
  if (bo) {
    const s = (await reader.at(bo.dataOffset, Math.min(bo.size, 16))).toString("latin1");
    if (s !== "little") fail(`byteorder '${s}' is not supported (only little-endian)`);
  }
  const pk = record("data.pkl");
  if (!pk) fail("archive has no 'data.pkl' record");
  if (pk!.size > MAX_PKL) fail(`data.pkl of ${pk!.size} bytes is too large`);
  const pickle = await reader.at(pk!.dataOffset, pk!.size);
  return { folder, dir, record, version, pickle, reader };
}

export interface TensorBlobInfo {
  dtype: DType;
  shape: number[];
  strides: number[];
  /** In elements. */
  storageOffset: number;
  /** Offset within the blob of record `data/<key>` (the storage). */
  dataOffset: number;
  /** Size of that record in bytes. */
  dataLength: number;
}

const STORAGE_DTYPE: Record<string, DType> = Object.fromEntries(
  Object.entries(LEGACY_STORAGE_CLASS).map(([d, c]) => [c, d as DType]),
);

function asInt(v: PyValue | undefined): number | undefined {
  return typeof v === "number" && Number.isSafeInteger(v) ? v : undefined;
}

function intTuple(v: PyValue | undefined): number[] | undefined {
  let items: PyValue[] | undefined;
  if (isTuple(v)) items = v.$tuple;
  else if (isCall(v, "torch.Size") && isTuple(v.args[0])) items = v.args[0].$tuple;
  if (!items) return undefined;
  const out: number[] = [];
  for (const x of items) {
    const n = asInt(x);
    if (n === undefined) return undefined;
    out.push(n);
  }
  return out;
}

/** Parses a tensor blob (`torch.save` of one tensor) without reading its data. */
export async function parseTensorBlob(read: ReadAt, blobLength: number, label: string): Promise<TensorBlobInfo> {
  const ar = await openTorchArchive(read, blobLength, label);
  const fail = (msg: string): never => {
    throw new CkptError("PICKLE", msg, { file: label });
  };
  const root = parsePickle(ar.pickle, { file: label });
  if (!isCall(root) || (root.$call !== "torch._utils._rebuild_tensor_v2" && root.$call !== "torch._utils._rebuild_tensor_v3")) {
    fail("data.pkl does not hold a single tensor (_rebuild_tensor_v2/_v3)");
  }
  const call = root as { $call: string; args: PyValue[] };
  const v3 = call.$call.endsWith("_v3");
  const a = call.args;
  if (a.length < (v3 ? 7 : 6)) fail(`${call.$call} has ${a.length} arguments`);
  const pid = a[0];
  if (!isPersId(pid) || !isTuple(pid.$persid)) fail("tensor storage is not a persistent id tuple");
  const p = (pid as { $persid: { $tuple: PyValue[] } }).$persid.$tuple;
  if (p.length !== 5 || p[0] !== "storage" || !isGlobal(p[1]) || typeof p[2] !== "string") fail("malformed storage persistent id");
  const cls = (p[1] as { $global: string }).$global;
  const key = p[2] as string;
  const storageCount = asInt(p[4]);
  if (storageCount === undefined || storageCount < 0) fail("malformed storage size in persistent id");
  let dtype: DType | undefined;
  let storageBytes: number;
  if (v3) {
    const dt = a[6];
    if (!isGlobal(dt) || !dt.$global.startsWith("torch.")) fail("_rebuild_tensor_v3 without a dtype");
    dtype = dtypeFromTorch((dt as { $global: string }).$global.slice(6));
    if (!dtype) fail(`unsupported dtype ${(dt as { $global: string }).$global}`);
    if (cls === "torch.UntypedStorage" || cls === "torch.storage.UntypedStorage") storageBytes = storageCount!;
    else {
      const sd = STORAGE_DTYPE[cls.replace(/^torch\./, "")];
      if (!sd) fail(`unsupported storage class ${cls}`);
      storageBytes = storageCount! * elementSize(sd!);
    }
  } else {
    dtype = STORAGE_DTYPE[cls.replace(/^torch\./, "")];
    if (!dtype) fail(`unsupported storage class ${cls}`);
    storageBytes = storageCount! * elementSize(dtype!);
  }
  const storageOffset = asInt(a[1]);
  const shape = intTuple(a[2]);
  const strides = intTuple(a[3]);
  if (storageOffset === undefined || storageOffset < 0) fail("bad storage offset");
  if (!shape || !strides || shape.length !== strides.length) fail("bad tensor size/stride");
  if (shape!.some((d) => d < 0) || strides!.some((s) => s < 0)) fail("negative size or stride");
  const esz = elementSize(dtype!);
  const rec = ar.record(`data/${key}`);
  if (!rec) throw new CkptError("ZIP", `storage record 'data/${key}' is missing`, { file: label });
  if (rec!.size !== storageBytes!) {
    throw new CkptError("ZIP", `storage record 'data/${key}' is ${rec!.size} bytes, persistent id says ${storageBytes!}`, { file: label });
  }
  if (numelOf(shape!) > 0) {
    let last = storageOffset!;
    shape!.forEach((d, i) => (last += (d - 1) * strides![i]!));
    if ((last + 1) * esz > rec!.size) fail(`tensor view exceeds its ${rec!.size}-byte storage`);
  }
  return { dtype: dtype!, shape: shape!, strides: strides!, storageOffset: storageOffset!, dataOffset: rec!.dataOffset, dataLength: rec!.size };
}

/** Parses a BYTE_IO blob (`torch.save` of a non-tensor value) and returns the unpickled plain value. */
export async function parseByteIoBlob(
  read: ReadAt,
  blobLength: number,
  label: string,
  opts: Omit<PickleOptions, "file"> = {},
): Promise<PyValue> {
  const ar = await openTorchArchive(read, blobLength, label);
  return parsePickle(ar.pickle, { ...opts, file: label });
}
