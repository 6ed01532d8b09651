// The one formatting of mappings/*.json: a value stays on one line when it fits in WIDTH columns at its place
// (so a short rule is one line), otherwise an object puts one key a line and an array one element a line, each
// laid out by the same rule. Key order and values are kept; the output is a function of the parsed JSON only, so
// two people editing a mapping cannot disagree on its layout.
//   node scripts/format-mappings.js          rewrite every mapping file
//   node scripts/format-mappings.js --check  exit 1 naming each file not in this formatting (CI runs this)
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const WIDTH = 120;

function oneLine(v) {
  if (Array.isArray(v)) return v.length ? `[${v.map(oneLine).join(", ")}]` : "[]";
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    return keys.length ? `{ ${keys.map((k) => `${JSON.stringify(k)}: ${oneLine(v[k])}`).join(", ")} }` : "{}";
  }
  return JSON.stringify(v);
}

/** `v` laid out at column `indent`, `prefix` (a key, or nothing) already on the line and `suffix` after it. */
function layout(v, indent, prefixLen, suffixLen) {
  const flat = oneLine(v);
  const scalar = !(v && typeof v === "object");
  if (scalar || indent + prefixLen + flat.length + suffixLen <= WIDTH) return flat;
  const pad = " ".repeat(indent + 2);
  if (Array.isArray(v)) {
    const items = v.map((x, i) => pad + layout(x, indent + 2, 0, i < v.length - 1 ? 1 : 0));
    return `[\n${items.join(",\n")}\n${" ".repeat(indent)}]`;
  }
  const keys = Object.keys(v);
  const items = keys.map((k, i) => {
    const key = `${JSON.stringify(k)}: `;
    return pad + key + layout(v[k], indent + 2, key.length, i < keys.length - 1 ? 1 : 0);
  });
  return `{\n${items.join(",\n")}\n${" ".repeat(indent)}}`;
}

export function formatMapping(text) {
  return layout(JSON.parse(text), 0, 0, 0) + "\n";
}

const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "mappings");
const check = process.argv.includes("--check");
let bad = 0;
// the mappings, their JSON Schemas, and the per-target data in targets/
const files = [...readdirSync(dir).filter((f) => f.endsWith(".json")), ...readdirSync(join(dir, "targets")).filter((f) => f.endsWith(".json")).map((f) => `targets/${f}`)].sort();
for (const f of files) {
  const p = join(dir, f);
  const text = readFileSync(p, "utf8");
  const want = formatMapping(text);
  if (text === want) continue;
  if (check) { console.error(`mappings/${f}: not in the mapping formatting; run node scripts/format-mappings.js`); bad++; }
  else { writeFileSync(p, want); console.log(`formatted mappings/${f}`); }
}
process.exit(bad ? 1 : 0);
