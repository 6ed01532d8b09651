export * from "./metadata.js";
export * from "./reader.js";
export * from "./writer.js";
