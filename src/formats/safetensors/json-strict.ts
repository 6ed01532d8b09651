// A strict JSON reader for safetensors headers and index files. Unlike JSON.parse it
//  - rejects duplicate object keys (JSON.parse silently keeps the last one),
//  - keeps numbers as their source text, so integers beyond 2^53 are never rounded silently,
//  - keeps object key order and never touches Object.prototype (keys live in a Map).
// Grammar: RFC 8259, like serde_json (which the reference implementation uses): raw control characters inside
// strings, lone surrogate escapes, trailing commas, comments and non-JSON whitespace are all rejected.

export type JsonValue = JsonObject | JsonValue[] | string | JsonNumber | boolean | null;
export type JsonObject = Map<string, JsonValue>;

export class JsonNumber {
  constructor(readonly raw: string) {}
  toString(): string {
    return this.raw;
  }
}

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly position: number,
    /** Set for duplicate keys, so callers can name the rule. */
    readonly duplicateKey?: string,
  ) {
    super(message);
    this.name = "JsonSyntaxError";
  }
}

const MAX_DEPTH = 128; // serde_json's recursion limit

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return v instanceof Map;
}

/** Parses one JSON document; leading and trailing JSON whitespace (space, tab, CR, LF) is allowed. */
export function parseStrictJson(text: string): JsonValue {
  let pos = 0;
  const n = text.length;

  const fail = (msg: string, at = pos): never => {
    throw new JsonSyntaxError(`${msg} at character ${at}`, at);
  };
  const skipWs = (): void => {
    while (pos < n) {
      const c = text.charCodeAt(pos);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) pos++;
      else break;
    }
  };
  const describe = (at: number): string => (at >= n ? "end of input" : JSON.stringify(text[at]));

  const parseString = (): string => {
    // at opening quote
    pos++;
    let out = "";
    let chunkStart = pos;
    while (true) {
      if (pos >= n) fail("unterminated string");
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        out += text.slice(chunkStart, pos);
        pos++;
        return out;
      }
      if (c < 0x20) fail(`raw control character U+${c.toString(16).padStart(4, "0")} in string`);
      if (c !== 0x5c) {
        pos++;
        continue;
      }
      out += text.slice(chunkStart, pos);
      pos++;
      if (pos >= n) fail("unterminated escape");
      const e = text[pos];
      pos++;
      switch (e) {
        case '"': out += '"'; break;
        case "\\": out += "\\"; break;
        case "/": out += "/"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "u": {
          const hi = readHex4();
          if (hi >= 0xd800 && hi <= 0xdbff) {
            if (text[pos] !== "\\" || text[pos + 1] !== "u") fail("lone leading surrogate in \\u escape");
            pos += 2;
            const lo = readHex4();
            if (lo < 0xdc00 || lo > 0xdfff) fail("invalid trailing surrogate in \\u escape");
            out += String.fromCharCode(hi, lo);
          } else if (hi >= 0xdc00 && hi <= 0xdfff) {
            fail("lone trailing surrogate in \\u escape");
          } else {
            out += String.fromCharCode(hi);
          }
          break;
        }
        default:
          fail(`invalid escape \\${e}`, pos - 1);
      }
      chunkStart = pos;
    }
  };
  const readHex4 = (): number => {
    const h = text.slice(pos, pos + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("invalid \\u escape");
    pos += 4;
    return parseInt(h, 16);
  };

  const NUM = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  const parseNumber = (): JsonNumber => {
    NUM.lastIndex = pos;
    const m = NUM.exec(text);
    if (!m || m[0] === "-" || m[0].length === 0) fail(`invalid number`);
    const raw = m![0];
    pos += raw.length;
    // A number must not run straight into more number-ish characters ("01", "1.", "1e").
    const next = text.charCodeAt(pos);
    if ((next >= 0x30 && next <= 0x39) || next === 0x2e || next === 0x65 || next === 0x45) fail("invalid number");
    return new JsonNumber(raw);
  };

  const parseValue = (depth: number): JsonValue => {
    skipWs();
    if (pos >= n) fail("unexpected end of input");
    const c = text[pos];
    if (c === "{") {
      if (depth >= MAX_DEPTH) fail("nesting too deep");
      pos++;
      const obj: JsonObject = new Map();
      skipWs();
      if (text[pos] === "}") {
        pos++;
        return obj;
      }
      while (true) {
        skipWs();
        if (text[pos] !== '"') fail(`expected a string key, found ${describe(pos)}`);
        const keyAt = pos;
        const key = parseString();
        if (obj.has(key)) throw new JsonSyntaxError(`duplicate key ${JSON.stringify(key)} at character ${keyAt}`, keyAt, key);
        skipWs();
        if (text[pos] !== ":") fail(`expected ':', found ${describe(pos)}`);
        pos++;
        obj.set(key, parseValue(depth + 1));
        skipWs();
        if (text[pos] === ",") {
          pos++;
          continue;
        }
        if (text[pos] === "}") {
          pos++;
          return obj;
        }
        fail(`expected ',' or '}', found ${describe(pos)}`);
      }
    }
    if (c === "[") {
      if (depth >= MAX_DEPTH) fail("nesting too deep");
      pos++;
      const arr: JsonValue[] = [];
      skipWs();
      if (text[pos] === "]") {
        pos++;
        return arr;
      }
      while (true) {
        arr.push(parseValue(depth + 1));
        skipWs();
        if (text[pos] === ",") {
          pos++;
          continue;
        }
        if (text[pos] === "]") {
          pos++;
          return arr;
        }
        fail(`expected ',' or ']', found ${describe(pos)}`);
      }
    }
    if (c === '"') return parseString();
    if (c === "-" || (c >= "0" && c <= "9")) return parseNumber();
    if (text.startsWith("true", pos)) {
      pos += 4;
      return true;
    }
    if (text.startsWith("false", pos)) {
      pos += 5;
      return false;
    }
    if (text.startsWith("null", pos)) {
      pos += 4;
      return null;
    }
    return fail(`unexpected ${describe(pos)}`);
  };

  const v = parseValue(0);
  skipWs();
  if (pos < n) fail(`trailing characters after the JSON value (${describe(pos)})`);
  return v;
}

/** Short human description of a JSON value's kind, for error messages. */
export function jsonKind(v: JsonValue | undefined): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (v instanceof Map) return "an object";
  if (Array.isArray(v)) return "an array";
  if (v instanceof JsonNumber) return `the number ${v.raw}`;
  if (typeof v === "string") return "a string";
  return `the boolean ${v}`;
}

/** Parses a non-negative integer ≤ 2^53 − 1 from a JSON number's source text, or returns why not. */
export function safeUint(v: JsonValue | undefined): number | string {
  if (!(v instanceof JsonNumber)) return `expected a non-negative integer, found ${jsonKind(v)}`;
  const raw = v.raw;
  if (raw.startsWith("-")) return `expected a non-negative integer, found negative ${raw}`;
  if (!/^(0|[1-9][0-9]*)$/.test(raw)) return `expected a non-negative integer, found non-integer ${raw}`;
  if (raw.length > 16 || BigInt(raw) > BigInt(Number.MAX_SAFE_INTEGER)) {
    return `integer ${raw} is beyond 2^53 - 1, the largest exactly representable value`;
  }
  return Number(raw);
}
