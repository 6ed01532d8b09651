// What a target's model can express, as data: a mapping's `requires` entries are checks on config.json that a
// TorchTitan version must pass before we write a checkpoint for it. A weight file is only useful if the target
// can build a model that computes what the HF model computes; a config field the target has no way to honour
// (a head size it derives itself, a bias it never allocates, a RoPE scaling it does not implement) would make
// us write a checkpoint nothing loads correctly, so the plan refuses it (or warns, where the difference is
// partial and the weights themselves are still right).
//
// Check grammar (one per entry):
//   A == B, A != B      A and B are products/quotients of dims names and integers: `head_dim == hidden // n_heads`
//                       (`/` exact, `//` floor like Python); skipped when a dims name is not in the config
//   !FIELD              config FIELD is absent, null or false: `!attention_bias`
//   FIELD in [a, b]     config FIELD is absent, null or one of the strings: `rope_scaling.rope_type in [default, llama3]`
// FIELD is a dotted path into config.json; `a|b` tries alternatives in order (HF renamed rope_scaling.type to
// rope_scaling.rope_type, and transformers 5 to rope_parameters.rope_type).

export type Severity = "refuse" | "warn";

export interface Requirement<T extends string = string> {
  /** Targets the requirement applies to (default: every target of the mapping). */
  targets?: T[];
  check: string;
  /** The config.json field the error names. */
  field: string;
  /** HF name of a mapping rule (`{L}` = layer 0): the error names its target counterpart. */
  tensor: string;
  /** The upstream fact that makes the check necessary. */
  why: string;
  /** What to do instead, shown as the error's hint. */
  hint?: string;
  /** "warn": still convert, but say what the target will do differently (default "refuse"). */
  severity?: Severity;
}

type Term = { name: string } | { value: number };
type Arith = { first: Term; rest: { op: "*" | "/" | "//"; term: Term }[] };

export type ParsedCheck =
  | { kind: "compare"; op: "==" | "!="; left: Arith; right: Arith; names: string[] }
  | { kind: "falsy"; paths: string[] }
  | { kind: "in"; paths: string[]; allowed: string[] };

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PATH = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

function parsePaths(s: string): string[] {
  const paths = s.split("|").map((p) => p.trim());
  if (!paths.every((p) => PATH.test(p))) throw new Error(`'${s}' is not a config field path (a.b, or a|b alternatives)`);
  return paths;
}

function parseArith(s: string, names: string[]): Arith {
  const tokens = s.trim().split(/\s*(\/\/|\*|\/)\s*/);
  const term = (t: string): Term => {
    if (/^\d+$/.test(t)) return { value: Number(t) };
    if (!NAME.test(t)) throw new Error(`'${t}' is neither a dims name nor an integer`);
    names.push(t);
    return { name: t };
  };
  const first = term(tokens[0]!);
  const rest: Arith["rest"] = [];
  for (let i = 1; i < tokens.length; i += 2) rest.push({ op: tokens[i] as "*" | "/" | "//", term: term(tokens[i + 1] ?? "") });
  return { first, rest };
}

/** Parses a check; throws an Error whose message says what is wrong (the schema adds file and path). */
export function parseCheck(check: string): ParsedCheck {
  const s = check.trim();
  const cmp = /^(.+?)\s*(==|!=)\s*(.+)$/.exec(s);
  if (cmp) {
    const names: string[] = [];
    return { kind: "compare", op: cmp[2] as "==" | "!=", left: parseArith(cmp[1]!, names), right: parseArith(cmp[3]!, names), names };
  }
  if (s.startsWith("!")) return { kind: "falsy", paths: parsePaths(s.slice(1)) };
  const inList = /^(\S+)\s+in\s+\[(.*)\]$/.exec(s);
  if (inList) {
    const allowed = inList[2]!.split(",").map((v) => v.trim()).filter((v) => v.length > 0);
    if (allowed.length === 0) throw new Error("an `in` list needs at least one value");
    return { kind: "in", paths: parsePaths(inList[1]!), allowed };
  }
  throw new Error("expected `A == B`, `A != B`, `!field` or `field in [a, b]`");
}

function evalArith(a: Arith, dims: Record<string, number>): number | undefined {
  const val = (t: Term) => ("value" in t ? t.value : dims[t.name]);
  let v = val(a.first);
  for (const { op, term } of a.rest) {
    const x = val(term);
    if (v === undefined || x === undefined) return undefined;
    v = op === "*" ? v * x : op === "/" ? v / x : Math.floor(v / x);
  }
  return v;
}

function arithText(a: Arith): string {
  const t = (x: Term) => ("value" in x ? String(x.value) : x.name);
  return [t(a.first), ...a.rest.map((r) => `${r.op} ${t(r.term)}`)].join(" ");
}

function lookup(config: Record<string, unknown>, paths: string[]): { path: string; value: unknown } | undefined {
  for (const path of paths) {
    let v: unknown = config;
    for (const k of path.split(".")) v = v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>)[k] : undefined;
    if (v !== undefined && v !== null) return { path, value: v };
  }
  return undefined;
}

/** What a config has that fails a check, and what the check needs instead. */
export interface CheckFailure {
  found: string;
  needs: string;
}

/** Undefined when the config passes the check. */
export function failedCheck(c: ParsedCheck, config: Record<string, unknown>, dims: Record<string, number>): CheckFailure | undefined {
  if (c.kind === "compare") {
    const l = evalArith(c.left, dims);
    const r = evalArith(c.right, dims);
    if (l === undefined || r === undefined) return undefined; // a dim this config does not define: nothing to check
    if (c.op === "==" ? l === r : l !== r) return undefined;
    return { found: `${arithText(c.left)} = ${l}`, needs: `${arithText(c.left)} ${c.op} ${arithText(c.right)} = ${r}` };
  }
  const hit = lookup(config, c.paths);
  if (!hit) return undefined;
  const found = `${hit.path} = ${JSON.stringify(hit.value)}`;
  if (c.kind === "falsy") return hit.value === false ? undefined : { found, needs: "it absent or false" };
  return c.allowed.includes(String(hit.value)) ? undefined : { found, needs: `one of ${c.allowed.join(", ")}` };
}
