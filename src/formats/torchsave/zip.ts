// Minimal zip directory reader for torch.save archives: parses via the central directory (EOCD, zip64 EOCD and
// locator, zip64 extra fields), resolves each entry's data offset from its local header, rejects compressed or
// encrypted entries, and validates that every offset is in range and that records do not overlap.
import { CkptError } from "../../errors.js";

export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface ZipEntry {
  name: string;
  crc32: number;
  size: number;
  localHeaderOffset: number;
  /** Offset of the stored bytes within the archive. */
  dataOffset: number;
}

export interface ZipDirectory {
  entries: ZipEntry[];
  byName: Map<string, ZipEntry>;
  cdOffset: number;
}

const WINDOW = 4096;
const MAX_CD = 64 * 1024 * 1024;
const MAX_ENTRIES = 1_000_000;

/** Serves reads from a cached head and tail window of the archive when they fall inside; else reads through. */
export class WindowedReader {
  private head?: Buffer;
  private tail?: Buffer;
  private tailStart = 0;
  constructor(private readonly read: ReadAt, readonly length: number, private readonly label: string) {}

  async at(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.length) {
      throw new CkptError("ZIP", `read [${offset}, ${offset + length}) is outside the ${this.length}-byte archive`, { file: this.label });
    }
    if (length === 0) return Buffer.alloc(0);
    if (offset + length <= Math.min(WINDOW, this.length)) {
      this.head ??= await this.exact(0, Math.min(WINDOW, this.length));
      return this.head.subarray(offset, offset + length);
    }
    const ts = Math.max(0, this.length - WINDOW);
    if (offset >= ts) {
      if (!this.tail) {
        this.tail = await this.exact(ts, this.length - ts);
        this.tailStart = ts;
      }
      return this.tail.subarray(offset - this.tailStart, offset - this.tailStart + length);
    }
    return this.exact(offset, length);
  }

  private async exact(offset: number, length: number): Promise<Buffer> {
    const b = await this.read(offset, length);
    if (b.length !== length) {
      throw new CkptError("ZIP", `short read: wanted ${length} bytes at ${offset}, got ${b.length}`, { file: this.label });
    }
    return b;
  }
}

export async function readZipDirectory(r: WindowedReader, label: string): Promise<ZipDirectory> {
  const fail = (msg: string): never => {
    throw new CkptError("ZIP", msg, { file: label });
  };
  const len = r.length;
  if (len < 22) fail(`archive of ${len} bytes is too short for a zip`);
  const magic = await r.at(0, 4);
  if (magic.readUInt32LE(0) !== 0x04034b50) fail("not a zip archive (no PK\\x03\\x04 at offset 0)");

  // EOCD: search backwards (PyTorch writes no comment, so it is normally the last 22 bytes).
  let eocd = -1;
  let scanLen = Math.min(len, 1024);
  for (let pass = 0; pass < 2 && eocd < 0; pass++) {
    const start = len - scanLen;
    const tail = await r.at(start, scanLen);
    for (let i = scanLen - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === 0x06054b50 && i + 22 + tail.readUInt16LE(i + 20) === scanLen) {
        eocd = start + i;
        break;
      }
    }
    if (scanLen === len) break;
    scanLen = Math.min(len, 65535 + 22);
  }
  if (eocd < 0) fail("no zip end-of-central-directory record");
  const e = await r.at(eocd, 22);
  if (e.readUInt16LE(4) !== 0 || e.readUInt16LE(6) !== 0) fail("multi-disk zip archives are not supported");
  let entries = e.readUInt16LE(10);
  let cdSize = e.readUInt32LE(12);
  let cdOffset = e.readUInt32LE(16);
  let cdLimit = eocd;
  if (eocd >= 20) {
    const loc = await r.at(eocd - 20, 20);
    if (loc.readUInt32LE(0) === 0x07064b50) {
      const z = Number(loc.readBigUInt64LE(8));
      if (!(z >= 0 && z + 56 <= eocd - 20)) fail(`zip64 end-of-central-directory offset ${z} out of range`);
      const z64 = await r.at(z, 56);
      if (z64.readUInt32LE(0) !== 0x06064b50) fail(`no zip64 end-of-central-directory record at ${z}`);
      entries = Number(z64.readBigUInt64LE(32));
      cdSize = Number(z64.readBigUInt64LE(40));
      cdOffset = Number(z64.readBigUInt64LE(48));
      cdLimit = z;
    }
  }
  if (entries > MAX_ENTRIES) fail(`zip claims ${entries} entries`);
  if (cdSize > MAX_CD) fail(`central directory of ${cdSize} bytes is too large`);
  if (!(cdOffset >= 0 && cdOffset + cdSize <= cdLimit)) fail(`central directory [${cdOffset}, +${cdSize}) out of range`);
  const cd = await r.at(cdOffset, cdSize);

  const list: Omit<ZipEntry, "dataOffset">[] = [];
  let p = 0;
  for (let i = 0; i < entries; i++) {
    if (p + 46 > cd.length) fail(`central directory truncated at entry ${i}`);
    if (cd.readUInt32LE(p) !== 0x02014b50) fail(`bad central directory signature at ${cdOffset + p}`);
    const flags = cd.readUInt16LE(p + 8);
    const method = cd.readUInt16LE(p + 10);
    const crc = cd.readUInt32LE(p + 16);
    let csize = cd.readUInt32LE(p + 20);
    let usize = cd.readUInt32LE(p + 24);
    const nlen = cd.readUInt16LE(p + 28);
    const xlen = cd.readUInt16LE(p + 30);
    const clen = cd.readUInt16LE(p + 32);
    let lho = cd.readUInt32LE(p + 42);
    if (p + 46 + nlen + xlen + clen > cd.length) fail(`central directory truncated at entry ${i}`);
    const name = cd.subarray(p + 46, p + 46 + nlen).toString("utf8");
    // zip64 extended information
    let x = p + 46 + nlen;
    const xend = x + xlen;
    while (x + 4 <= xend) {
      const id = cd.readUInt16LE(x);
      const sz = cd.readUInt16LE(x + 2);
      if (x + 4 + sz > xend) fail(`bad extra field in entry '${name}'`);
      if (id === 0x0001) {
        let q = x + 4;
        const next = (): number => {
          if (q + 8 > x + 4 + sz) fail(`truncated zip64 extra field in entry '${name}'`);
          const v = Number(cd.readBigUInt64LE(q));
          q += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = next();
        if (csize === 0xffffffff) csize = next();
        if (lho === 0xffffffff) lho = next();
      }
      x += 4 + sz;
    }
    if (flags & 1) fail(`entry '${name}' is encrypted`);
    if (method !== 0) fail(`entry '${name}' is compressed (method ${method}); torch.save archives are stored`);
    if (csize !== usize) fail(`entry '${name}' has compressed size ${csize} != size ${usize}`);
    list.push({ name, crc32: crc, size: usize, localHeaderOffset: lho });
    p += 46 + nlen + xlen + clen;
  }

  const out: ZipEntry[] = [];
  const byName = new Map<string, ZipEntry>();
  for (const en of list) {
    if (byName.has(en.name)) fail(`duplicate entry '${en.name}'`);
    if (!(en.localHeaderOffset >= 0 && en.localHeaderOffset + 30 <= cdOffset)) {
      fail(`entry '${en.name}': local header offset ${en.localHeaderOffset} out of range`);
    }
    // one read for the fixed header and the name (the local name must equal the central one)
    const cname = Buffer.from(en.name, "utf8");
    if (en.localHeaderOffset + 30 + cname.length > cdOffset) fail(`entry '${en.name}': local header runs past the central directory`);
    const h = await r.at(en.localHeaderOffset, 30 + cname.length);
    if (h.readUInt32LE(0) !== 0x04034b50) fail(`entry '${en.name}': no local header at ${en.localHeaderOffset}`);
    if (h.readUInt16LE(8) !== 0) fail(`entry '${en.name}' is compressed (local header)`);
    const nlen = h.readUInt16LE(26);
    const xlen = h.readUInt16LE(28);
    const dataOffset = en.localHeaderOffset + 30 + nlen + xlen;
    if (dataOffset > cdOffset) fail(`entry '${en.name}': local header runs past the central directory`);
    if (nlen !== cname.length || !h.subarray(30).equals(cname)) {
      fail(`entry '${en.name}': local header names '${h.subarray(30, 30 + Math.min(nlen, cname.length)).toString("utf8")}'`);
    }
    if (dataOffset + en.size > cdOffset) fail(`entry '${en.name}': data [${dataOffset}, +${en.size}) out of range`);
    const full = { ...en, dataOffset };
    out.push(full);
    byName.set(en.name, full);
  }
  const sorted = [...out].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (a.dataOffset + a.size > b.localHeaderOffset) fail(`entries '${a.name}' and '${b.name}' overlap`);
  }
  return { entries: out, byName, cdOffset };
}
