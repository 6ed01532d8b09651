// The layers of src/ hold: every import goes down the layer order (LAYERS below, docs/architecture.md), no import
// cycle between folders, none between files, and command-line code only under src/cli/. Every import counts — static, `import type`, re-exports, dynamic `import("…")` and `require("…")` — as
// TypeScript's own pre-processor lists them, since a type-only cycle is still two modules that cannot be read apart.
// A "unit" is a folder of src/ (src/plan/, src/formats/dcp/, …) or a file directly in src/ (src/catalog.ts, …);
// the graph is checked at two grains: each first-level unit (src/formats/ as one), and each folder on its own.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const SRC = join(ROOT, "src");

/** Every .ts / .cts file under src/, as paths relative to src/ with "/" separators. */
function sourceFiles(dir = SRC): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (/\.c?ts$/.test(entry.name) && !entry.name.endsWith(".d.ts")) out.push(relative(SRC, path).split(sep).join("/"));
  }
  return out.sort();
}

/** The src/ file a relative specifier names ("./x.js" → x.ts, "./x.cjs" → x.cts, "./dir" → dir/index.ts). */
function resolveSpecifier(from: string, spec: string): string | undefined {
  if (!spec.startsWith(".")) return undefined; // node: builtins and packages are outside the layering
  const base = join(dirname(join(SRC, from)), spec);
  const candidates = [
    base.replace(/\.js$/, ".ts"), base.replace(/\.cjs$/, ".cts"), base + ".ts", join(base, "index.ts"),
  ];
  const hit = candidates.find((c) => c.startsWith(SRC + sep) && existsSync(c) && /\.c?ts$/.test(c));
  if (!hit) throw new Error(`src/${from} imports "${spec}", which names no file under src/`);
  return relative(SRC, hit).split(sep).join("/");
}

/** file → the src/ files it imports. */
function importGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const file of sourceFiles()) {
    const info = ts.preProcessFile(readFileSync(join(SRC, file), "utf8"), true, true);
    const deps = new Set<string>();
    for (const ref of info.importedFiles) {
      const target = resolveSpecifier(file, ref.fileName);
      if (target && target !== file) deps.add(target);
    }
    graph.set(file, deps);
  }
  return graph;
}

/** The unit a file belongs to at a grain: "plan/", "formats/" or "formats/dcp/", or "catalog.ts" for a file in src/. */
function unitOf(file: string, grain: "top" | "folder"): string {
  const parts = file.split("/");
  if (parts.length === 1) return file;
  return (grain === "top" ? parts[0]! : parts.slice(0, -1).join("/")) + "/";
}

/** Collapses a file graph onto units; each edge remembers one import that makes it, to name in a failure. */
function unitGraph(files: Map<string, Set<string>>, grain: "top" | "folder"): Map<string, Map<string, string>> {
  const units = new Map<string, Map<string, string>>();
  for (const [file, deps] of files) {
    const from = unitOf(file, grain);
    const edges = units.get(from) ?? new Map<string, string>();
    units.set(from, edges);
    for (const dep of deps) {
      const to = unitOf(dep, grain);
      if (to !== from && !edges.has(to)) edges.set(to, `src/${file} → src/${dep}`);
    }
  }
  return units;
}

/** Strongly connected components with more than one node (Tarjan), each sorted; deterministic order. */
function cycles(graph: Map<string, Iterable<string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index); low.set(v, index); index++;
    stack.push(v); onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)); }
      else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const component: string[] = [];
      let w: string;
      do { w = stack.pop()!; onStack.delete(w); component.push(w); } while (w !== v);
      if (component.length > 1) out.push(component.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

/** One concrete loop inside a strongly connected component: a → b → … → a, by breadth-first search back to a. */
function loopThrough(graph: Map<string, Iterable<string>>, component: string[]): string[] {
  const inside = new Set(component);
  const start = component[0]!;
  const prev = new Map<string, string>();
  const queue = [start];
  while (queue.length) {
    const v = queue.shift()!;
    for (const w of graph.get(v) ?? []) {
      if (!inside.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let at: string | undefined = v; at !== undefined && at !== start; at = prev.get(at)) path.splice(1, 0, at);
        return [...path, start];
      }
      if (!prev.has(w)) { prev.set(w, v); queue.push(w); }
    }
  }
  return component;
}

function describeCycles(graph: Map<string, Map<string, string>>): string[] {
  const plain = new Map([...graph].map(([k, v]) => [k, [...v.keys()]]));
  return cycles(plain).map((component) => {
    const loop = loopThrough(plain, component);
    const why = loop.slice(0, -1).map((u, i) => `    ${graph.get(u)!.get(loop[i + 1]!)}`);
    return `${loop.join(" → ")}\n${why.join("\n")}`;
  });
}

const files = importGraph();

/**
 * The layers of src/, top to bottom (docs/architecture.md, "Folders and layers"): a unit imports only units after it.
 * A new folder or file directly in src/ is placed here, in the layer its imports allow.
 */
const LAYERS = [
  "cli/", "api.ts", "commands/", "health/", "finalize/", "lora/", "exec/", "fixtures/", "plan/", "ops/", "mapping/", "catalog.ts",
  "catalog-types.ts", "formats/", "sources/", "kernels/", "dtypes.ts", "errors.ts", "version.ts", "util/",
];

/** Imports from a unit to one at or above it in LAYERS, each with the file import that makes it. */
function upwardImports(units: Map<string, Map<string, string>>): string[] {
  return [...units].flatMap(([from, edges]) =>
    [...edges].filter(([to]) => LAYERS.indexOf(to) <= LAYERS.indexOf(from)).map(([to, why]) => `${from} → ${to} (${why})`));
}

describe("layers of src/", () => {
  test("the graph is read: every file is parsed and the known edges are there", () => {
    assert.ok(files.size > 80, `only ${files.size} files under src/`);
    // Controls for the parser: a static import, a type-only import, and a dynamic import("…") the CLI uses.
    assert.ok(files.get("commands/convert.ts")?.has("plan/convert-plan.ts"));
    assert.ok(files.get("cli/main.ts")?.has("commands/convert.ts"), "cli/main.ts imports its commands dynamically");
    assert.ok(files.get("exec/worker-entry.cts")?.size, "the worker entry's require() is seen");
  });

  test("a planted upward import is found, as a cycle and against the layer order (control)", () => {
    const planted = new Map(files);
    planted.set("dtypes.ts", new Set([...(planted.get("dtypes.ts") ?? []), "cli/main.ts"]));
    const found = describeCycles(unitGraph(planted, "top"));
    assert.ok(found.some((c) => c.includes("cli/") && c.includes("dtypes.ts")), found.join("\n"));
    assert.ok(upwardImports(unitGraph(planted, "top")).includes("dtypes.ts → cli/ (src/dtypes.ts → src/cli/main.ts)"));
    assert.deepEqual(cycles(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]], ["d", ["a"]]])), [["a", "b", "c"]]);
  });

  test("every unit of src/ imports only units below it in LAYERS", () => {
    const units = unitGraph(files, "top");
    const unplaced = [...units.keys()].filter((u) => !LAYERS.includes(u));
    assert.deepEqual(unplaced, [], "units of src/ missing from LAYERS in test/layers.test.ts: place each in its layer");
    const upward = upwardImports(units);
    assert.deepEqual(upward, [], `imports against the layer order:\n${upward.join("\n")}`);
  });

  test("no import cycle between first-level folders of src/ (src/formats/ as one)", () => {
    const found = describeCycles(unitGraph(files, "top"));
    assert.deepEqual(found, [], `folder cycles:\n${found.join("\n")}`);
  });

  test("no import cycle between folders of src/ (each folder on its own)", () => {
    const found = describeCycles(unitGraph(files, "folder"));
    assert.deepEqual(found, [], `folder cycles:\n${found.join("\n")}`);
  });

  test("no import cycle between files of src/", () => {
    const asUnits = new Map([...files].map(([f, deps]) => [f, new Map([...deps].map((d) => [d, `src/${f} → src/${d}`]))]));
    const found = describeCycles(asUnits);
    assert.deepEqual(found, [], `file cycles:\n${found.join("\n")}`);
  });

  test("command-line code lives under src/cli/ only: yargs, process.argv, process.exit, stdout nowhere else", () => {
    const outside: string[] = [];
    for (const file of files.keys()) {
      if (file.startsWith("cli/")) continue;
      const text = readFileSync(join(SRC, file), "utf8");
      for (const [i, line] of text.split("\n").entries()) {
        if (/from "yargs|process\.argv|process\.exit\(|process\.stdout|console\.log\(/.test(line)) outside.push(`src/${file}:${i + 1}: ${line.trim()}`);
      }
    }
    assert.deepEqual(outside, []);
  });

  test("nothing outside src/cli/ imports src/cli/", () => {
    const into = [...files].flatMap(([f, deps]) =>
      f.startsWith("cli/") ? [] : [...deps].filter((d) => d.startsWith("cli/")).map((d) => `src/${f} → src/${d}`));
    assert.deepEqual(into, []);
  });
});
