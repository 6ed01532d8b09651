// safetensors format: header parsing/validation, positional reads, writer planning, sharded index.
export * from "./header.js";
export * from "./reader.js";
export * from "./writer.js";
export * from "./index-file.js";
export { parseStrictJson, JsonNumber, JsonSyntaxError, type JsonValue, type JsonObject } from "./json-strict.js";
