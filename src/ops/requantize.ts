// `--to hf --requantize mxfp4|int4`: the inverse of the mapping's value ops (issue 14 item 4, issue 16 item 4). The
// --to hf plan writes every expert in its decoded HF layout (the mxfp4 rule's `transpose` sibling, the int4 rule's
// plain `.weight` sibling); this pass, run on the finished output folder before it is committed, re-encodes those
// tensors with kernels/requantize.ts into the rule's packed HF tensors (mxfp4: `hf` blocks + `scales`; int4: `hf`
// weight_packed + `scale` + `shape`), so the names and the encoding both come from the rule being inverted. Any
// group that is not exactly representable under the source quantizer's scale rule refuses the whole conversion with
// a count (nothing is written). The manifest's entries of the replaced tensors are swapped for the packed tensors'
// (crc32, piece hashes and chunk hash as the executor records them), so `ckpt verify` checks the requantized output.
import { readFileSync, writeFileSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { crc32 } from "../kernels/checksum.js";
import { digestOf, parseDigest } from "../exec/digest.js";
import { CkptError } from "../errors.js";
import type { Mapping, TensorRule } from "../mapping/schema.js";
import { valueOp, transformSteps } from "../mapping/schema.js";
import { compilePattern, fillPattern, matchPattern } from "../mapping/patterns.js";
import { mxfp4Encode, int4Encode, mxfp4GroupDecodesTo, int4GroupDecodesTo } from "../kernels/requantize.js";
import { int4GroupSize } from "../plan/int4.js";

export type RequantizeKind = "mxfp4" | "int4";

interface StEntry { dtype: string; shape: number[]; data_offsets: [number, number] }
interface StFile { meta?: Record<string, string>; names: string[]; entries: Map<string, StEntry>; data: Buffer }

function readSt(path: string): StFile {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const entries = new Map<string, StEntry>();
  let meta: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") meta = v as Record<string, string>;
    else entries.set(k, v as StEntry);
  }
  return { meta, names: [...entries.keys()], entries, data: buf.subarray(8 + n) };
}

function writeSt(path: string, tensors: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[], meta?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (meta) header.__metadata__ = meta;
  let off = 0;
  for (const t of tensors) { header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] }; off += t.bytes.length; }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8);
  const h = Buffer.from(json, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeFileSync(path, Buffer.concat([len, h, ...tensors.map((t) => Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.length))]));
}

/** Values of a BF16 / F16 / F32 tensor as f64 (exact). */
function valuesOf(e: StEntry, data: Buffer, name: string): Float64Array {
  const raw = data.subarray(e.data_offsets[0], e.data_offsets[1]);
  const n = e.shape.reduce((a, b) => a * b, 1);
  const out = new Float64Array(n);
  const bytes = new Uint8Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  if (e.dtype === "F32") { const f = new Float32Array(bytes.buffer); for (let i = 0; i < n; i++) out[i] = f[i]!; }
  else if (e.dtype === "BF16") {
    const u = new Uint16Array(bytes.buffer), w = new Uint32Array(1), f = new Float32Array(w.buffer);
    for (let i = 0; i < n; i++) { w[0] = u[i]! << 16; out[i] = f[0]!; }
  } else throw new CkptError("DTYPE", `--requantize needs BF16 or F32 expert values, ${name} is ${e.dtype}`, { tensor: name });
  return out;
}

/** Swaps the last two dims of a [..., a, b] value tensor. */
function transposeLast(v: Float64Array, shape: number[]): { v: Float64Array; shape: number[] } {
  const a = shape[shape.length - 2]!, b = shape[shape.length - 1]!, outer = v.length / (a * b);
  const o = new Float64Array(v.length);
  for (let m = 0; m < outer; m++) for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) o[m * a * b + j * a + i] = v[m * a * b + i * b + j]!;
  const s = [...shape];
  [s[s.length - 2], s[s.length - 1]] = [b, a];
  return { v: o, shape: s };
}

interface Replacement { from: string; to: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[] }

/** Packed tensors of the --config folder (the original HF checkpoint) by their mapping-normalised names; files read lazily. */
function sourceTensors(dir: string | undefined, mapping: Mapping): Map<string, { e: StEntry; st: () => StFile }> {
  const out = new Map<string, { e: StEntry; st: () => StFile }>();
  if (!dir || !existsSync(dir)) return out;
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors"))) {
    const path = join(dir, f);
    const buf = readFileSync(path);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, StEntry>;
    let cache: StFile | undefined;
    for (const [k, e] of Object.entries(header)) {
      if (k === "__metadata__") continue;
      const p = (mapping.prefixes ?? []).find((x) => k.startsWith(x.from));
      out.set(p ? p.to + k.slice(p.from.length) : k, { e, st: () => (cache ??= readSt(path)) });
    }
  }
  return out;
}

/** For each decoded tensor of the output: the rule it inverts and its packed siblings. */
function pairs(mapping: Mapping, kind: RequantizeKind): { plain: TensorRule; packed: TensorRule }[] {
  const out: { plain: TensorRule; packed: TensorRule }[] = [];
  for (const r of mapping.tensors) {
    if (!r.hf || !valueOp(r, kind)) continue;
    const sib = kind === "mxfp4"
      ? mapping.tensors.find((x) => x !== r && x.one_of !== undefined && x.one_of === r.one_of && x.hf && !valueOp(x, "mxfp4"))
      : mapping.tensors.find((x) => x !== r && x.hf === r.hf!.replace(/_packed$/, "") && transformSteps(x).length === 0);
    if (sib) out.push({ plain: sib, packed: r });
  }
  return out;
}

/** Refuses --requantize up front when the mapping has no rule of that kind to invert (before anything is written). */
export function checkRequantizable(mapping: Mapping, kind: RequantizeKind): void {
  if (pairs(mapping, kind).length === 0) throw new CkptError("USAGE", `--requantize ${kind}: the ${mapping.architecture} mapping has no ${kind} tensors to re-encode`);
}

/**
 * Re-encodes the decoded experts of an HF output folder (`dir`, before commit) into the packed layout. `config` is
 * the (text) config giving the INT4 group size; `shapeDtype` the dtype of int4 weight_shape tensors (the source's).
 * Returns the number of tensors re-encoded; throws REQUANTIZE with a count when values are not representable.
 */
export async function requantizeHfDir(dir: string, mapping: Mapping, kind: RequantizeKind, config: Record<string, unknown>, shapeDtype: "I32" | "I64" = "I64",
  sourceDir?: string, onWarning?: (msg: string) => void): Promise<number> {
  const src = sourceTensors(sourceDir, mapping);
  /** The source's bytes of a packed tensor with this (normalised) name and shape, if the --config folder holds it. */
  const srcBytes = (name: string, shape: number[]): Uint8Array | undefined => {
    const t = src.get(name);
    if (!t || t.e.shape.join() !== shape.join()) return undefined;
    const st = t.st();
    return new Uint8Array(st.data.buffer.slice(st.data.byteOffset + t.e.data_offsets[0], st.data.byteOffset + t.e.data_offsets[1]));
  };
  let adopted = 0;
  const rules = pairs(mapping, kind).map((p) => ({ ...p, pat: compilePattern(p.plain.hf!) }));
  if (rules.length === 0) throw new CkptError("USAGE", `--requantize ${kind}: the ${mapping.architecture} mapping has no ${kind} tensors`);
  const files = readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
  const parsed = new Map(files.map((f) => [f, readSt(join(dir, f))]));
  const repl = new Map<string, Replacement>();
  let badGroups = 0, badTensors = 0, first = "";
  for (const [, st] of parsed) {
    for (const name of st.names) {
      for (const { plain, packed, pat } of rules) {
        const vals = matchPattern(pat, name);
        if (!vals) continue;
        const e = st.entries.get(name)!;
        let v = valuesOf(e, st.data, name), shape = e.shape;
        if (kind === "mxfp4") {
          if (transformSteps(plain).some((s) => s.op === "transpose")) ({ v, shape } = transposeLast(v, shape));
          const cols = shape[shape.length - 1]!, rows = v.length / cols;
          if (cols % 32 !== 0) throw new CkptError("SHAPE", `--requantize mxfp4: ${name} has ${cols} input columns, not a multiple of 32`, { tensor: name });
          const enc = mxfp4Encode(v, rows, cols);
          const op0 = valueOp(packed, "mxfp4")!, lead0 = shape.slice(0, -1);
          const sb = srcBytes(fillPattern(packed.hf!, vals), [...lead0, cols / 32, 16]), ss = srcBytes(fillPattern(op0.scales, vals), [...lead0, cols / 32]);
          if (sb && ss) {
            // several scales encode the same values (an all-zero group takes any): the source's encoding, when it decodes to these values, is kept
            for (let g = 0; g < rows * (cols / 32); g++) {
              const differs = enc.badMask[g] || ss[g] !== enc.scales[g] || sb.subarray(g * 16, g * 16 + 16).some((b, i) => b !== enc.blocks[g * 16 + i]);
              if (differs && mxfp4GroupDecodesTo(sb, ss, g, v, e.dtype as "F32" | "BF16")) {
                enc.blocks.set(sb.subarray(g * 16, g * 16 + 16), g * 16); enc.scales[g] = ss[g]!;
                if (enc.badMask[g]) { enc.badMask[g] = 0; enc.bad--; }
                adopted++;
              }
            }
            enc.firstBad = enc.badMask.indexOf(1);
          }
          if (enc.bad) { badGroups += enc.bad; badTensors++; first ||= `${name} group ${enc.firstBad}`; continue; }
          const G = cols / 32, lead = shape.slice(0, -1);
          const op = valueOp(packed, "mxfp4")!;
          repl.set(name, { from: name, to: [
            { name: fillPattern(packed.hf!, vals), dtype: "U8", shape: [...lead, G, 16], bytes: enc.blocks },
            { name: fillPattern(op.scales, vals), dtype: "U8", shape: [...lead, G], bytes: enc.scales },
          ] });
        } else {
          if (shape.length !== 2) throw new CkptError("SHAPE", `--requantize int4: ${name} is not 2-D`, { tensor: name });
          const [rows, cols] = shape as [number, number];
          const group = int4GroupSize(config, "config.json", name);
          const enc = int4Encode(v, rows, cols, group);
          const op0 = valueOp(packed, "int4")!, S = Math.ceil(cols / group), W = Math.ceil(cols / 8);
          const sb = srcBytes(fillPattern(packed.hf!, vals), [rows, W]), ss = srcBytes(fillPattern(op0.scale, vals), [rows, S]);
          if (sb && ss && group % 8 === 0) {
            const sw = new Uint32Array(sb.buffer, sb.byteOffset, rows * W), sc = new Uint16Array(ss.buffer, ss.byteOffset, rows * S);
            const ew = new Uint32Array(enc.packed.buffer, enc.packed.byteOffset, rows * W);
            for (let r = 0; r < rows; r++) for (let g = 0; g < S; g++) {
              const w0 = r * W + (g * group) / 8, w1 = r * W + Math.min(W, ((g + 1) * group) / 8);
              let differs = !!enc.badMask[r * S + g] || sc[r * S + g] !== enc.scales[r * S + g];
              for (let w = w0; w < w1 && !differs; w++) differs = sw[w] !== ew[w];
              if (differs && int4GroupDecodesTo(sw, sc, r, g, rows, cols, group, v, e.dtype as "F32" | "BF16")) {
                for (let w = w0; w < w1; w++) ew[w] = sw[w]!;
                enc.scales[r * S + g] = sc[r * S + g]!;
                if (enc.badMask[r * S + g]) { enc.badMask[r * S + g] = 0; enc.bad--; }
                adopted++;
              }
            }
            enc.firstBad = enc.badMask.indexOf(1);
          }
          if (enc.bad) { badGroups += enc.bad; badTensors++; first ||= `${name} group ${enc.firstBad}`; continue; }
          const op = valueOp(packed, "int4")!;
          const shp = shapeDtype === "I64" ? new Uint8Array(new BigInt64Array([BigInt(rows), BigInt(cols)]).buffer) : new Uint8Array(new Int32Array([rows, cols]).buffer);
          repl.set(name, { from: name, to: [
            { name: fillPattern(packed.hf!, vals), dtype: "I32", shape: [rows, Math.ceil(cols / 8)], bytes: enc.packed },
            { name: fillPattern(op.scale, vals), dtype: "BF16", shape: [rows, Math.ceil(cols / group)], bytes: new Uint8Array(enc.scales.buffer) },
            { name: fillPattern(op.shape, vals), dtype: shapeDtype, shape: [2], bytes: shp },
          ] });
        }
        break;
      }
    }
  }
  if (adopted) onWarning?.(`--requantize ${kind}: ${adopted} group(s) have several exact encodings (e.g. an all-zero group takes any scale) and keep the source's (${sourceDir}), which decodes to the same values`);
  if (badGroups) {
    const what = kind === "mxfp4" ? "32-value group(s) are not MXFP4-representable (E2M1 × the E8M0 scale OpenAI's quantizer picks: amax/6 rounded up to a power of two, 0 for all-zero groups)"
      : "group(s) are not INT4-representable (integer q in [-8, 7] times one positive BF16 scale per group, as compressed-tensors writes; BF16 rounding of q·s breaks this: convert with --dtype keep for exact F32 products)";
    throw new CkptError("REQUANTIZE", `--requantize ${kind}: ${badGroups} ${what}, in ${badTensors} tensor(s), first ${first}; nothing written`, { hint: "drop --requantize to write the bf16/f32 layout" });
  }
  if (repl.size === 0) throw new CkptError("REQUANTIZE", `--requantize ${kind}: the output holds no decoded ${kind} expert tensors to re-encode`);
  // rewrite each file holding a replaced tensor, the packed tensors in the place of the decoded one
  const manifestPath = join(dir, "ckpt-manifest.json");
  const manifest = existsSync(manifestPath) ? (JSON.parse(readFileSync(manifestPath, "utf8")) as { digest?: string; piece_bytes?: number; files?: Record<string, { size: number; hash?: string }>; tensors?: Record<string, unknown> }) : undefined;
  const alg = parseDigest(manifest?.digest);
  const pieceBytes = manifest?.piece_bytes ?? 16 << 20;
  /** A manifest chunk as the executor records it: pieces of ≤ piece_bytes, hash over their concatenated hex digests. */
  const chunkOf = async (file: string, t: { shape: number[]; bytes: Uint8Array }) => {
    const pieces: string[] = [];
    for (let o = 0; o < Math.max(1, t.bytes.length); o += pieceBytes) pieces.push(await digestOf(alg, t.bytes.subarray(o, Math.min(t.bytes.length, o + pieceBytes))));
    return { file, offsets: t.shape.map(() => 0), sizes: t.shape, bytes: t.bytes.length, crc32: crc32(t.bytes), hash: await digestOf(alg, Buffer.from(pieces.join(""))), piece_hashes: pieces };
  };
  const weightMap = new Map<string, string>();
  for (const [f, st] of parsed) {
    if (!st.names.some((n) => repl.has(n))) { for (const n of st.names) weightMap.set(n, f); continue; }
    const out: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[] = [];
    for (const n of st.names) {
      const r = repl.get(n);
      const e = st.entries.get(n)!;
      if (!r) { out.push({ name: n, dtype: e.dtype, shape: e.shape, bytes: st.data.subarray(e.data_offsets[0], e.data_offsets[1]) }); continue; }
      out.push(...r.to);
      if (manifest?.tensors) delete manifest.tensors[n];
      for (const t of r.to) if (manifest?.tensors) manifest.tensors[t.name] = { dtype: t.dtype, shape: t.shape, chunks: [await chunkOf(f, t)] };
    }
    const sorted = out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    writeSt(join(dir, f), sorted, st.meta);
    for (const t of sorted) weightMap.set(t.name, f);
    if (manifest?.files?.[f]) manifest.files[f]!.size = readFileSync(join(dir, f)).length;
  }
  const indexPath = join(dir, "model.safetensors.index.json");
  if (existsSync(indexPath)) {
    const idx = JSON.parse(readFileSync(indexPath, "utf8")) as { metadata?: Record<string, unknown>; weight_map: Record<string, string> };
    idx.weight_map = Object.fromEntries([...weightMap].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    let total = 0;
    for (const f of parsed.keys()) { const st = readSt(join(dir, f)); for (const e of st.entries.values()) total += e.data_offsets[1] - e.data_offsets[0]; }
    idx.metadata = { ...(idx.metadata ?? {}), total_size: total };
    const text = JSON.stringify(idx, null, 2) + "\n";
    writeFileSync(indexPath, text);
    const entry = manifest?.files?.["model.safetensors.index.json"];
    if (entry) { entry.size = Buffer.byteLength(text); entry.hash = await digestOf(alg, Buffer.from(text)); }
  }
  if (manifest) writeFileSync(manifestPath, JSON.stringify(manifest, null, 1) + "\n");
  return repl.size;
}
