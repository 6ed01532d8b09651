// Secrets: a Hugging Face token (HF_TOKEN) never shows up in logs, errors (one-line, --debug stack, the error
// object with its causes), --json output, progress events or the files of an output (manifest included) — on a
// successful Hub conversion and on error paths where the server echoes the Authorization header back.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { fileURLToPath } from "node:url";
import { tinyLlamaTensors } from "../src/fixtures/tiny-llama.js";
import { buildSafetensors } from "../src/formats/safetensors/index.js";
import { runConvert } from "../src/commands/convert.js";
import { runInspect } from "../src/commands/inspect.js";
import { redactSecrets } from "../src/errors.js";
import { startMockHub, type MockHub } from "./helpers/mock-hub.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const TOKEN = "hf_FakeSecretToken0123456789abcdefXYZ";
const OTHER = "hf_AnotherRefusedToken9876543210zyxw";
const SHA = "0123456789abcdef0123456789abcdef01234567";
const tmp = mkdtempSync(join(tmpdir(), "ckpt-secrets-"));
let hub: MockHub;

function repoFiles(): Record<string, Buffer | string> {
  const g = tinyLlamaTensors({ vocab: 64, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, ffn: 48, layers: 1 });
  return {
    "config.json": JSON.stringify(g.config),
    "tokenizer_config.json": "{}",
    "model.safetensors": Buffer.from(buildSafetensors(g.tensors, { format: "pt" })),
  };
}

before(async () => {
  hub = await startMockHub({
    "org/private": { sha: SHA, files: repoFiles(), private: true, token: TOKEN },
    "org/broken": { sha: SHA, files: repoFiles(), private: true, token: TOKEN, fail: { "model.safetensors": 500 } },
  }, { echoAuthorization: true });
});
after(async () => {
  await hub.close();
  rmSync(tmp, { recursive: true, force: true });
});

function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  // the 500s of org/broken are retried: 3 tries, a few ms apart
  const e: NodeJS.ProcessEnv = { ...process.env, CKPT_HUB_TRIES: "3", CKPT_HUB_BACKOFF: "0.005", CKPT_HUB_BACKOFF_MAX: "0.02" };
  for (const k of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"]) delete e[k];
  return { ...e, HF_ENDPOINT: hub.url, HF_HOME: join(tmp, "hf-home"), HF_HUB_CACHE: join(tmp, "hub-cache"), HF_TOKEN: TOKEN, CKPT_DEBUG: "1", ...extra };
}

/** Runs the CLI without blocking this process's event loop (the mock Hub lives here). */
function cli(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: env(extraEnv), stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => { out += d.toString(); });
    child.stderr.on("data", (d: Buffer) => { out += d.toString(); });
    child.on("close", (code) => res({ code, out }));
  });
}

/** No form of the secret: the token itself, its body without the prefix, or a Bearer header. */
function assertClean(text: string, what: string): void {
  for (const secret of [TOKEN, OTHER]) {
    assert.ok(!text.includes(secret), `${what} contains the token`);
    assert.ok(!text.includes(secret.slice(3)), `${what} contains the token's body`);
  }
  assert.doesNotMatch(text, /Bearer hf_[A-Za-z0-9]/, `${what} contains an Authorization header`);
}

function assertTreeClean(dir: string): void {
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else assertClean(readFileSync(p, "latin1"), p);
    }
  };
  walk(dir);
}

describe("the HF token never leaks", () => {
  test("redactSecrets masks hf_ tokens", () => {
    assert.equal(redactSecrets(`x ${TOKEN} y`), "x hf_*** y");
  });

  test("successful Hub conversion: stdout, stderr (--json events, warnings), the output files and the manifest are clean", async () => {
    const out = join(tmp, "ok-out");
    const r = await cli(["convert", "org/private", out, "--json", "--debug"]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /"event":"result"/);
    assertClean(r.out, "CLI output");
    const manifest = readFileSync(join(out, "ckpt-manifest.json"), "utf8");
    assert.match(manifest, /org\/private/);
    assertTreeClean(out);
    const v = await cli(["verify", out, "--json"]);
    assert.equal(v.code, 0, v.out);
    assertClean(v.out, "verify output");
    const i = await cli(["inspect", "org/private", "--json"]);
    assert.equal(i.code, 0, i.out);
    assertClean(i.out, "inspect output");
    // nothing token-shaped lands in the HF cache either (refs, snapshots)
    assertTreeClean(join(tmp, "hub-cache"));
  });

  test("refused token echoed back by the server: one clean error line, --debug stack clean too", async () => {
    const out = join(tmp, "denied-out");
    const r = await cli(["convert", "org/private", out, "--json", "--debug"], { HF_TOKEN: OTHER, HF_HUB_CACHE: join(tmp, "cache-denied") });
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /ckpt: HUB: /);
    assertClean(r.out, "CLI error output");
  });

  test("download failure with the token echoed: clean CLI output, and nothing left behind", async () => {
    const out = join(tmp, "broken-out");
    const r = await cli(["convert", "org/broken", out, "--debug"], { HF_HUB_CACHE: join(tmp, "cache-broken") });
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /ckpt: HUB: /);
    assertClean(r.out, "CLI error output");
    assert.throws(() => statSync(out));
  });

  test("API errors: message, oneLine, stack and the whole cause chain are clean", async () => {
    for (const [spec, token] of [["org/private", OTHER], ["org/broken", TOKEN]] as const) {
      let err: unknown;
      try {
        await runConvert({ source: spec, out: join(tmp, "api-out"), endpoint: hub.url, token, cacheDir: join(tmp, `api-cache-${token.slice(3, 8)}`), env: {}, retry: { tries: 3, backoffMs: 5, maxBackoffMs: 20 } });
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof Error, String(err));
      assert.match(err.message, /Authorization: Bearer \*\*\*/, "the server echoed the header, and it was scrubbed");
      assertClean(inspect(err, { depth: 10 }), `${spec}: inspect(error)`);
      assertClean(JSON.stringify(err), `${spec}: JSON of the error`);
      let c: unknown = err;
      for (let i = 0; c instanceof Error && i < 10; i++, c = c.cause) assertClean(`${c.message}\n${c.stack}`, `${spec}: cause ${i}`);
    }
    // and a successful in-process inspect returns nothing token-shaped
    const r = await runInspect("org/private", { endpoint: hub.url, token: TOKEN, cacheDir: join(tmp, "api-cache-ok"), env: {} });
    assertClean(JSON.stringify(r), "inspect result");
  });
});
