// torch.save archive writer (docs/dcp-format.md §7–8): records `data.pkl`, `byteorder`, `data/0`, `version`
// under `archive/`, stored (no compression), every record's data 64-byte aligned via an "FB" extra field, data
// descriptors, then central directory, zip64 EOCD, zip64 locator and EOCD, exactly as PyTorch's miniz writer lays
// them out. The layout of a tensor blob depends only on dtype and shape, so it can be computed before the data exists.
import { type DType, TORCH_DTYPE, elementSize, numelOf } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import { PickleWriter, type PlainValue } from "../pickle/writer.js";
import { crc32 } from "./crc32.js";

export const ARCHIVE_FOLDER = "archive";
const ALIGN = 64;
const LFH = 30;
const CDH = 46;
const DD = 16;
const Z64_EOCD = 56;
const Z64_LOC = 20;
const EOCD = 22;
const U32_LIMIT = 0xffffffff;

/** Legacy dtypes: `_rebuild_tensor_v2` with a typed storage class. Everything else torch knows uses v3. */
export const LEGACY_STORAGE_CLASS: Partial<Record<DType, string>> = {
  F64: "DoubleStorage", F32: "FloatStorage", F16: "HalfStorage", BF16: "BFloat16Storage", I64: "LongStorage",
  I32: "IntStorage", I16: "ShortStorage", I8: "CharStorage", U8: "ByteStorage", BOOL: "BoolStorage",
  C64: "ComplexFloatStorage",
};

/** Row-major strides as PyTorch computes them for a contiguous tensor (size-0 dims count as 1). */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= Math.max(shape[i]!, 1);
  }
  return s;
}

/** The `data.pkl` of one contiguous CPU tensor whose storage is record `data/0` (§8). */
export function tensorDataPkl(dtype: DType, shape: readonly number[]): Buffer {
  const torchName = TORCH_DTYPE[dtype];
  if (!torchName) throw new CkptError("DTYPE", `dtype ${dtype} has no PyTorch equivalent and cannot be saved in DCP`);
  for (const d of shape) if (!Number.isSafeInteger(d) || d < 0) throw new CkptError("INTERNAL", `bad shape [${shape.join(", ")}]`);
  const numel = numelOf(shape);
  const legacy = LEGACY_STORAGE_CLASS[dtype];
  const strides = contiguousStrides(shape);
  const w = new PickleWriter().proto(2);
  w.global("torch._utils", legacy ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3").mark();
  // persistent id ("storage", StorageClass, "0", "cpu", numel-or-nbytes)
  w.mark().str("storage");
  if (legacy) w.global("torch", legacy);
  else w.global("torch.storage", "UntypedStorage"); // what PyTorch 2.6/2.14 write (not "torch UntypedStorage")
  w.str("0").str("cpu").int(legacy ? numel : numel * elementSize(dtype)).op(0x74).binpersid();
  w.int(0);
  w.tuple(shape.length, () => shape.forEach((d) => w.int(d)));
  w.tuple(strides.length, () => strides.forEach((d) => w.int(d)));
  w.bool(false);
  w.reduce("collections", "OrderedDict", 0, () => {});
  if (!legacy) w.global("torch", torchName);
  w.op(0x74).op(0x52).stop();
  return w.bytes();
}

// ---------------------------------------------------------------------------------------------------------------
// zip structures

interface RecordPos {
  name: string; // full name, with folder
  nameBytes: Buffer;
  size: number;
  headerOffset: number;
  extraLen: number;
  dataOffset: number;
}

function planRecords(records: { name: string; size: number }[], folder = ARCHIVE_FOLDER): { recs: RecordPos[]; end: number } {
  let cursor = 0;
  const recs: RecordPos[] = [];
  for (const r of records) {
    const name = `${folder}/${r.name}`;
    const nameBytes = Buffer.from(name, "utf8");
    if (r.size >= U32_LIMIT || cursor >= U32_LIMIT) {
      throw new CkptError("INTERNAL", `torch.save record '${name}' would need zip64 sizes/offsets (split the chunk)`);
    }
    const start = cursor + LFH + nameBytes.length + 4;
    const pad = (ALIGN - (start % ALIGN)) % ALIGN;
    const dataOffset = start + pad;
    recs.push({ name, nameBytes, size: r.size, headerOffset: cursor, extraLen: 4 + pad, dataOffset });
    cursor = dataOffset + r.size + DD;
  }
  return { recs, end: cursor };
}

function localHeader(r: RecordPos): Buffer {
  const b = Buffer.alloc(LFH + r.nameBytes.length + r.extraLen);
  b.writeUInt32LE(0x04034b50, 0);
  b.writeUInt16LE(0, 4); // version needed
  b.writeUInt16LE(0x0808, 6); // data descriptor + UTF-8
  // method, time, date, crc, sizes: 0
  b.writeUInt16LE(r.nameBytes.length, 26);
  b.writeUInt16LE(r.extraLen, 28);
  r.nameBytes.copy(b, LFH);
  const e = LFH + r.nameBytes.length;
  b.write("FB", e, "latin1");
  b.writeUInt16LE(r.extraLen - 4, e + 2);
  b.fill(0x5a, e + 4);
  return b;
}

function dataDescriptor(crc: number, size: number): Buffer {
  const b = Buffer.alloc(DD);
  b.writeUInt32LE(0x08074b50, 0);
  b.writeUInt32LE(crc >>> 0, 4);
  b.writeUInt32LE(size, 8);
  b.writeUInt32LE(size, 12);
  return b;
}

function centralEntry(r: RecordPos, crc: number): Buffer {
  const b = Buffer.alloc(CDH + r.nameBytes.length);
  b.writeUInt32LE(0x02014b50, 0);
  b.writeUInt16LE(0, 4); // made by
  b.writeUInt16LE(0, 6); // needed
  b.writeUInt16LE(0x0808, 8);
  b.writeUInt16LE(0, 10); // method
  b.writeUInt32LE(crc >>> 0, 16);
  b.writeUInt32LE(r.size, 20);
  b.writeUInt32LE(r.size, 24);
  b.writeUInt16LE(r.nameBytes.length, 28);
  b.writeUInt32LE(r.headerOffset, 42);
  r.nameBytes.copy(b, CDH);
  return b;
}

function endRecords(entries: number, cdOffset: number, cdSize: number): Buffer {
  const b = Buffer.alloc(Z64_EOCD + Z64_LOC + EOCD);
  const z = cdOffset + cdSize;
  b.writeUInt32LE(0x06064b50, 0);
  b.writeBigUInt64LE(44n, 4);
  b.writeUInt16LE(0x031e, 12);
  b.writeUInt16LE(45, 14);
  b.writeBigUInt64LE(BigInt(entries), 24);
  b.writeBigUInt64LE(BigInt(entries), 32);
  b.writeBigUInt64LE(BigInt(cdSize), 40);
  b.writeBigUInt64LE(BigInt(cdOffset), 48);
  let o = Z64_EOCD;
  b.writeUInt32LE(0x07064b50, o);
  b.writeBigUInt64LE(BigInt(z), o + 8);
  b.writeUInt32LE(1, o + 16);
  o += Z64_LOC;
  b.writeUInt32LE(0x06054b50, o);
  b.writeUInt16LE(Math.min(entries, 0xffff), o + 8);
  b.writeUInt16LE(Math.min(entries, 0xffff), o + 10);
  b.writeUInt32LE(Math.min(cdSize, U32_LIMIT), o + 12);
  b.writeUInt32LE(Math.min(cdOffset, U32_LIMIT), o + 16);
  return b;
}

function centralAndEnd(recs: RecordPos[], crcs: number[], cdOffset: number): Buffer {
  const cd = Buffer.concat(recs.map((r, i) => centralEntry(r, crcs[i]!)));
  return Buffer.concat([cd, endRecords(recs.length, cdOffset, cd.length)]);
}

/** A complete archive of in-memory records (used for BYTE_IO values and small blobs). */
export function encodeArchive(records: { name: string; data: Uint8Array }[], folder = ARCHIVE_FOLDER): Buffer {
  const { recs, end } = planRecords(records.map((r) => ({ name: r.name, size: r.data.length })), folder);
  const parts: Buffer[] = [];
  const crcs: number[] = [];
  records.forEach((r, i) => {
    const c = crc32(r.data);
    crcs.push(c);
    parts.push(localHeader(recs[i]!), Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength), dataDescriptor(c, r.data.length));
  });
  parts.push(centralAndEnd(recs, crcs, end));
  return Buffer.concat(parts);
}

const LITTLE = Buffer.from("little");
const VERSION = Buffer.from("3\n");

// ---------------------------------------------------------------------------------------------------------------
// tensor blobs

export interface BlobLayout {
  totalLength: number;
  dataOffset: number;
  dataLength: number;
  /** Bytes [0, dataOffset). */
  head: Buffer;
  /** = dataOffset + dataLength */
  tailOffset: number;
  /** Bytes [tailOffset, totalLength). */
  tail(crc32OfData: number): Buffer;
}

/** Layout of `torch.save(tensor)` for a contiguous tensor of `dtype`/`shape`, before its data exists. */
export function layoutTensorBlob(dtype: DType, shape: number[]): BlobLayout {
  const pkl = tensorDataPkl(dtype, shape);
  const dataLength = numelOf(shape) * elementSize(dtype);
  const { recs, end } = planRecords([
    { name: "data.pkl", size: pkl.length },
    { name: "byteorder", size: LITTLE.length },
    { name: "data/0", size: dataLength },
    { name: "version", size: VERSION.length },
  ]);
  const [rPkl, rOrder, rData, rVer] = recs as [RecordPos, RecordPos, RecordPos, RecordPos];
  const crcPkl = crc32(pkl);
  const crcOrder = crc32(LITTLE);
  const crcVer = crc32(VERSION);
  const head = Buffer.concat([
    localHeader(rPkl), pkl, dataDescriptor(crcPkl, pkl.length),
    localHeader(rOrder), LITTLE, dataDescriptor(crcOrder, LITTLE.length),
    localHeader(rData),
  ]);
  if (head.length !== rData.dataOffset) throw new Error("internal: tensor blob head length mismatch");
  const tailOffset = rData.dataOffset + dataLength;
  const totalLength = end + recs.reduce((s, r) => s + CDH + r.nameBytes.length, 0) + Z64_EOCD + Z64_LOC + EOCD;
  return {
    totalLength,
    dataOffset: rData.dataOffset,
    dataLength,
    head,
    tailOffset,
    tail(crcData: number): Buffer {
      const t = Buffer.concat([
        dataDescriptor(crcData, dataLength),
        localHeader(rVer), VERSION, dataDescriptor(crcVer, VERSION.length),
        centralAndEnd(recs, [crcPkl, crcOrder, crcData, crcVer], end),
      ]);
      if (tailOffset + t.length !== totalLength) throw new Error("internal: tensor blob tail length mismatch");
      return t;
    },
  };
}

/** Whole blob in memory: `torch.save` of a contiguous tensor with raw little-endian `data`. */
export function encodeTensorBlob(dtype: DType, shape: number[], data: Uint8Array): Buffer {
  const l = layoutTensorBlob(dtype, shape);
  if (data.length !== l.dataLength) {
    throw new CkptError("INTERNAL", `tensor data is ${data.length} bytes, ${dtype}[${shape.join(", ")}] needs ${l.dataLength}`);
  }
  return Buffer.concat([l.head, Buffer.from(data.buffer, data.byteOffset, data.byteLength), l.tail(crc32(data))]);
}

/** `torch.save(value)` of a plain value (int/float/str/bool/None/list/tuple/dict), as a BYTE_IO blob. */
export function encodeByteIoBlob(value: PlainValue): Buffer {
  const pkl = new PickleWriter().proto(2).value(value).stop().bytes();
  return encodeArchive([
    { name: "data.pkl", data: pkl },
    { name: "byteorder", data: LITTLE },
    { name: "version", data: VERSION },
  ]);
}
