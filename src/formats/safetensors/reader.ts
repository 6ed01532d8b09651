// Reading safetensors headers and tensor bytes with positional reads; the whole file is never loaded.
import { open, type FileHandle } from "node:fs/promises";
import { CkptError } from "../../errors.js";
import { checkPrelude, findEntry, parseSafetensorsHeader, quote, type SafetensorsHeader } from "./header.js";

/** Reads exactly `length` bytes at `offset`, or throws naming the file. */
export async function preadExact(fh: FileHandle, offset: number, length: number, file: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) {
      throw new CkptError("IO", `short read: wanted ${length} bytes at offset ${offset}, got ${got} (file shrank while reading?)`, { file });
    }
    got += bytesRead;
  }
  return buf;
}

/** Reads and validates the header of a local safetensors file: 8 bytes, then N bytes. */
export async function readSafetensorsHeader(path: string, label: string = path): Promise<SafetensorsHeader> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CkptError(code === "ENOENT" ? "NOT_FOUND" : "IO", `cannot open: ${(e as Error).message}`, { file: label, cause: e });
  }
  try {
    const { size } = await fh.stat();
    return await readSafetensorsHeaderFrom((offset, length) => preadExact(fh, offset, length, label), size, label);
  } finally {
    await fh.close();
  }
}

/** Same as readSafetensorsHeader over any positional reader (Hub ranged reads, a Source). */
export async function readSafetensorsHeaderFrom(
  read: (offset: number, length: number) => Promise<Buffer>,
  fileSize: number,
  file: string,
): Promise<SafetensorsHeader> {
  const prefix = fileSize >= 8 ? await read(0, 8) : undefined;
  const n = checkPrelude(prefix, fileSize, file);
  const json = n > 0 ? await read(8, n) : Buffer.alloc(0);
  return parseSafetensorsHeader(json, n, fileSize, file);
}

/**
 * Bytes [byteStart, byteStart + byteLength) of tensor `name`'s data (defaults: the whole tensor), by pread.
 */
export async function readTensorBytes(
  path: string,
  header: SafetensorsHeader,
  name: string,
  byteStart = 0,
  byteLength?: number,
): Promise<Buffer> {
  const range = tensorByteRange(header, name, byteStart, byteLength);
  if (range.length === 0) return Buffer.alloc(0);
  const fh = await open(path, "r");
  try {
    return await preadExact(fh, range.offset, range.length, header.file);
  } finally {
    await fh.close();
  }
}

/** Absolute file offset and length of a byte range inside tensor `name`; validates the range. */
export function tensorByteRange(
  header: SafetensorsHeader,
  name: string,
  byteStart = 0,
  byteLength?: number,
): { offset: number; length: number } {
  const e = findEntry(header, name);
  if (!e) {
    throw new CkptError("MISSING_TENSOR", `tensor ${quote(name)} is not in this safetensors file`, { file: header.file, tensor: name });
  }
  const size = e.end - e.begin;
  const length = byteLength ?? size - byteStart;
  if (!Number.isSafeInteger(byteStart) || !Number.isSafeInteger(length) || byteStart < 0 || length < 0 || byteStart + length > size) {
    throw new CkptError(
      "INTERNAL",
      `byte range [${byteStart}, ${byteStart + length}) is outside tensor ${quote(name)} of ${size} bytes`,
      { file: header.file, tensor: name },
    );
  }
  return { offset: header.dataStart + e.begin + byteStart, length };
}
