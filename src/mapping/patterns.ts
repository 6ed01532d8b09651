// Name patterns with `{L}` (layer) and `{E}` (expert) placeholders, compiled to anchored regexes.

export interface CompiledPattern {
  source: string;
  regex: RegExp;
  /** Placeholder names in order of appearance. */
  keys: string[];
}

export function compilePattern(pattern: string): CompiledPattern {
  const keys: string[] = [];
  const body = pattern
    .split(/(\{[A-Z]\})/)
    .map((part) => {
      const m = /^\{([A-Z])\}$/.exec(part);
      if (m) {
        keys.push(m[1]!);
        return "(0|[1-9][0-9]*)";
      }
      return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    })
    .join("");
  return { source: pattern, regex: new RegExp(`^${body}$`), keys };
}

/** Placeholder values when `name` matches, else undefined. */
export function matchPattern(p: CompiledPattern, name: string): Record<string, number> | undefined {
  const m = p.regex.exec(name);
  if (!m) return undefined;
  const vals: Record<string, number> = {};
  p.keys.forEach((k, i) => (vals[k] = Number(m[i + 1])));
  return vals;
}

export function fillPattern(pattern: string, vals: Record<string, number>): string {
  return pattern.replace(/\{([A-Z])\}/g, (_, k: string) => {
    if (!(k in vals)) throw new Error(`pattern ${pattern}: no value for {${k}}`);
    return String(vals[k]);
  });
}
