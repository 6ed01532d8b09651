export * from "./crc32.js";
export * from "./writer.js";
export * from "./reader.js";
export { type ReadAt, type ZipEntry, type ZipDirectory, WindowedReader, readZipDirectory } from "./zip.js";
