import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CkptError } from "../src/errors.js";
import { readConfig, validateConfigFields } from "../src/sources/config.js";
import { hfCacheRoot, hfHome, openHfCache, repoCacheDir, resolveCachedRevision } from "../src/sources/hf-cache.js";
import { globToRegExp, hubToken, isCheckpointFile, isTruthyEnv, openHub, openHubRanged, parseRepoSpec } from "../src/sources/hub.js";
import { openLocal } from "../src/sources/local.js";
import { openSource } from "../src/sources/resolve.js";
import { startMockHub, type MockHub } from "./helpers/mock-hub.js";

// ---------------------------------------------------------------------------------------------------------------
// helpers

/** A valid safetensors file built by hand: u64 LE header length, JSON header (space padded to 8), data. */
function safetensors(tensors: { name: string; dtype: string; shape: number[]; data: Buffer }[]): Buffer {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([n, json, ...tensors.map((t) => t.data)]);
}

function f32(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

const SHARD1 = safetensors([
  { name: "model.embed_tokens.weight", dtype: "F32", shape: [4, 2], data: f32([1, 2, 3, 4, 5, 6, 7, 8]) },
  { name: "model.layers.0.self_attn.q_proj.weight", dtype: "F32", shape: [2, 2], data: f32([9, 10, 11, 12]) },
]);
const SHARD2 = safetensors([
  { name: "model.norm.weight", dtype: "F32", shape: [2], data: f32([13, 14]) },
  { name: "lm_head.weight", dtype: "F32", shape: [4, 2], data: f32([15, 16, 17, 18, 19, 20, 21, 22]) },
]);
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";
const INDEX = JSON.stringify({
  metadata: { total_size: 22 * 4 },
  weight_map: {
    "model.embed_tokens.weight": S1,
    "model.layers.0.self_attn.q_proj.weight": S1,
    "model.norm.weight": S2,
    "lm_head.weight": S2,
  },
});
const CONFIG = JSON.stringify({
  architectures: ["LlamaForCausalLM"],
  hidden_size: 2,
  num_attention_heads: 1,
  num_hidden_layers: 1,
  vocab_size: 4,
});
const SHA = "0123456789abcdef0123456789abcdef01234567";
const SHA_V2 = "89abcdef0123456789abcdef0123456789abcdef";

function repoFiles(): Record<string, Buffer | string> {
  return {
    "config.json": CONFIG,
    "generation_config.json": "{}",
    "tokenizer_config.json": "{}", // same content as generation_config.json: one blob, two links
    "model.safetensors.index.json": INDEX,
    [S1]: SHARD1,
    [S2]: SHARD2,
    "README.md": "# a model\n",
    "pytorch_model.bin": Buffer.alloc(64, 7),
    "consolidated.safetensors": Buffer.concat([SHARD1, Buffer.alloc(16)]), // not in the index: not fetched
    "onnx/model.onnx": Buffer.alloc(32, 1),
  };
}

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Buffer): string => createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");

async function tempDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(join(tmpdir(), `ckpt-${prefix}-`));
}

const HF_VARS = [
  "HF_HUB_CACHE",
  "HUGGINGFACE_HUB_CACHE",
  "HF_HOME",
  "XDG_CACHE_HOME",
  "HF_TOKEN",
  "HUGGING_FACE_HUB_TOKEN",
  "HF_TOKEN_PATH",
  "HF_ENDPOINT",
  "HF_HUB_OFFLINE",
];

/** Runs fn with the HF variables cleared and `vars` set, restoring the environment afterwards. */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = new Map(HF_VARS.map((k) => [k, process.env[k]]));
  for (const k of HF_VARS) delete process.env[k];
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const k of HF_VARS) delete process.env[k];
    for (const [k, v] of saved) if (v !== undefined) process.env[k] = v;
  }
}

async function rejectsCkpt(p: Promise<unknown>, code: string, check?: (e: CkptError) => void): Promise<CkptError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof CkptError, `expected CkptError, got ${String(e)}`);
    assert.equal(e.code, code, e.oneLine());
    check?.(e);
    return e;
  }
  assert.fail(`expected CkptError ${code}`);
}

function throwsCkpt(fn: () => unknown, code: string): CkptError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CkptError, `expected CkptError, got ${String(e)}`);
    assert.equal(e.code, code, e.oneLine());
    return e;
  }
  assert.fail(`expected CkptError ${code}`);
}

// ---------------------------------------------------------------------------------------------------------------

describe("local sources", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir("local");
    await fsp.mkdir(join(dir, "model", "sub"), { recursive: true });
    await fsp.mkdir(join(dir, "model", ".git"), { recursive: true });
    await fsp.mkdir(join(dir, "outside"), { recursive: true });
    await fsp.writeFile(join(dir, "model", S1), SHARD1);
    await fsp.writeFile(join(dir, "model", "config.json"), CONFIG);
    await fsp.writeFile(join(dir, "model", "sub", "extra.txt"), "hello");
    await fsp.writeFile(join(dir, "model", ".git", "HEAD"), "ref");
    await fsp.writeFile(join(dir, "outside", "secret.safetensors"), SHARD2);
    await fsp.symlink(join(dir, "outside", "secret.safetensors"), join(dir, "model", "escape.safetensors"));
    await fsp.symlink("../outside/secret.safetensors", join(dir, "model", "escape-rel.safetensors"));
    await fsp.symlink(S1, join(dir, "model", "alias.safetensors")); // inside: fine
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test("single file", async () => {
    const src = await openLocal(join(dir, "model", S1));
    try {
      assert.equal(src.kind, "file");
      assert.deepEqual(src.files(), [S1]);
      assert.equal(await src.size(S1), SHARD1.length);
      assert.deepEqual(await src.read(S1, 0, 8), SHARD1.subarray(0, 8));
      assert.deepEqual(await src.read(S1, SHARD1.length - 4, 4), SHARD1.subarray(SHARD1.length - 4));
      assert.equal((await src.read(S1, 3, 0)).length, 0);
      assert.equal(await src.readText("config.json"), undefined);
      assert.equal(src.localPath(S1), await fsp.realpath(join(dir, "model", S1)));
      await rejectsCkpt(src.read(S1, SHARD1.length - 4, 8), "IO", (e) => {
        assert.equal(e.file, S1);
        assert.match(e.message, /short read/);
      });
    } finally {
      await src.close();
    }
  });

  test("folder: recursive listing, reads, missing files", async () => {
    const src = await openLocal(join(dir, "model"));
    try {
      assert.equal(src.kind, "folder");
      const files = src.files();
      assert.ok(files.includes(S1));
      assert.ok(files.includes("config.json"));
      assert.ok(files.includes("sub/extra.txt"));
      assert.ok(files.includes("alias.safetensors"));
      assert.ok(!files.some((f) => f.startsWith(".git")), "hidden folders are skipped");
      assert.equal(await src.readText("sub/extra.txt"), "hello");
      assert.equal(await src.readText("config.json"), CONFIG);
      assert.equal(await src.readText("nope.json"), undefined);
      assert.deepEqual(await src.read("alias.safetensors", 8, 16), SHARD1.subarray(8, 24));
      // concurrent reads share one handle
      const parts = await Promise.all([0, 8, 16, 24].map((o) => src.read(S1, o, 8)));
      assert.deepEqual(Buffer.concat(parts), SHARD1.subarray(0, 32));
      await rejectsCkpt(src.read("missing.safetensors", 0, 1), "NOT_FOUND", (e) => assert.equal(e.file, "missing.safetensors"));
    } finally {
      await src.close();
    }
  });

  test("symlinks leaving the folder are refused", async () => {
    const src = await openLocal(join(dir, "model"));
    try {
      for (const name of ["escape.safetensors", "escape-rel.safetensors"]) {
        const e = throwsCkpt(() => src.localPath(name), "IO");
        assert.match(e.message, /outside/);
        assert.equal(e.file, name);
        await rejectsCkpt(src.read(name, 0, 8), "IO");
        await rejectsCkpt(src.readText(name), "IO");
      }
    } finally {
      await src.close();
    }
  });

  test("'..' and absolute names are refused", async () => {
    const src = await openLocal(join(dir, "model"));
    try {
      for (const name of ["../outside/secret.safetensors", "sub/../../outside/secret.safetensors", "sub\\..\\..\\x", join(dir, "outside", "secret.safetensors")]) {
        throwsCkpt(() => src.localPath(name), "IO");
        await rejectsCkpt(src.read(name, 0, 8), "IO");
      }
    } finally {
      await src.close();
    }
  });

  test("a missing path is NOT_FOUND naming it", async () => {
    await rejectsCkpt(openLocal(join(dir, "nope")), "NOT_FOUND", (e) => assert.match(e.message, /nope/));
    await rejectsCkpt(openSource(join(dir, "nope.safetensors")), "NOT_FOUND", (e) => assert.match(e.message, /nope\.safetensors/));
    await rejectsCkpt(openSource("./not/here"), "NOT_FOUND", (e) => assert.match(e.message, /not\/here/));
    await rejectsCkpt(openSource("not a repo!"), "NOT_FOUND");
    const src = await openSource(join(dir, "model"));
    assert.equal(src.kind, "folder");
    await src.close();
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("HF cache", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir("cache");
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test("cache root resolution order", () => {
    const home = process.env.HOME ?? "";
    assert.equal(hfCacheRoot({ HF_HUB_CACHE: "/a", HUGGINGFACE_HUB_CACHE: "/b", HF_HOME: "/c", XDG_CACHE_HOME: "/d" }), "/a");
    assert.equal(hfCacheRoot({ HUGGINGFACE_HUB_CACHE: "/b", HF_HOME: "/c", XDG_CACHE_HOME: "/d" }), "/b");
    assert.equal(hfCacheRoot({ HF_HOME: "/c", XDG_CACHE_HOME: "/d" }), "/c/hub");
    assert.equal(hfCacheRoot({ XDG_CACHE_HOME: "/d" }), "/d/huggingface/hub");
    assert.ok(hfCacheRoot({}).endsWith(join(".cache", "huggingface", "hub")));
    if (home) assert.equal(hfCacheRoot({ HF_HUB_CACHE: "" }), join(home, ".cache", "huggingface", "hub"));
    assert.equal(hfHome({ XDG_CACHE_HOME: "/d" }), "/d/huggingface");
    assert.equal(repoCacheDir("/r", "meta-llama/Llama-3.1-8B"), "/r/models--meta-llama--Llama-3.1-8B");
  });

  test("a hand-built cache resolves through refs and env vars", async () => {
    // Layout as Python writes it: blobs/<etag>, snapshots/<sha>/<path> -> ../../blobs/<etag>, refs/main.
    const root = join(dir, "xdg", "huggingface", "hub");
    const repo = repoCacheDir(root, "org/cached");
    await fsp.mkdir(join(repo, "blobs"), { recursive: true });
    await fsp.mkdir(join(repo, "snapshots", SHA, "sub"), { recursive: true });
    await fsp.mkdir(join(repo, "refs"), { recursive: true });
    await fsp.writeFile(join(repo, "blobs", sha256(SHARD1)), SHARD1);
    await fsp.writeFile(join(repo, "blobs", gitSha1(Buffer.from(CONFIG))), CONFIG);
    await fsp.symlink(`../../blobs/${sha256(SHARD1)}`, join(repo, "snapshots", SHA, "model.safetensors"));
    await fsp.symlink(`../../../blobs/${gitSha1(Buffer.from(CONFIG))}`, join(repo, "snapshots", SHA, "sub", "config.json"));
    await fsp.writeFile(join(repo, "snapshots", SHA, "config.json"), CONFIG); // copy fallback (no symlink)
    await fsp.writeFile(join(repo, "refs", "main"), SHA + "\n");

    assert.equal(await resolveCachedRevision(repo, "main"), SHA);
    assert.equal(await resolveCachedRevision(repo, SHA_V2), SHA_V2);
    assert.equal(await resolveCachedRevision(repo, "nope"), undefined);

    const varSets: Record<string, string>[] = [{ XDG_CACHE_HOME: join(dir, "xdg") }, { HF_HOME: join(dir, "xdg", "huggingface") }, { HF_HUB_CACHE: root }, { HUGGINGFACE_HUB_CACHE: root }];
    for (const vars of varSets) {
      await withEnv({ ...vars, HF_HUB_OFFLINE: "yes" }, async () => {
        const src = await openSource("org/cached");
        try {
          assert.equal(src.kind, "hf-cache");
          assert.equal(src.revision, SHA);
          assert.equal(src.id, "org/cached");
          assert.deepEqual(src.files().sort(), ["config.json", "model.safetensors", "sub/config.json"]);
          assert.deepEqual(await src.read("model.safetensors", 0, SHARD1.length), SHARD1);
          assert.equal(await src.readText("sub/config.json"), CONFIG);
          assert.equal(src.localPath("model.safetensors"), await fsp.realpath(join(repo, "blobs", sha256(SHARD1))));
        } finally {
          await src.close();
        }
      });
    }
    // By sha, and by the snapshot folder given as a plain path (symlinks into ../../blobs allowed there).
    const bySha = await openHfCache("org/cached", { cacheDir: root, revision: SHA });
    assert.equal(bySha.revision, SHA);
    await bySha.close();
    const direct = await openSource(join(repo, "snapshots", SHA));
    assert.equal(direct.kind, "folder");
    assert.deepEqual(await direct.read("model.safetensors", 0, 8), SHARD1.subarray(0, 8));
    await direct.close();
    const repoFolder = await openSource(repo);
    assert.equal(repoFolder.revision, SHA);
    await repoFolder.close();
    // Offline misses name the variable.
    await withEnv({ HF_HUB_CACHE: root, HF_HUB_OFFLINE: "1" }, async () => {
      await rejectsCkpt(openSource("org/cached@v9"), "OFFLINE", (e) => assert.match(e.oneLine(), /HF_HUB_OFFLINE/));
      await rejectsCkpt(openSource("org/absent"), "OFFLINE", (e) => assert.match(e.oneLine(), /HF_HUB_OFFLINE/));
      const src = await openSource("org/cached");
      await rejectsCkpt(src.read("model-00001-of-00002.safetensors", 0, 8), "OFFLINE", (e) => {
        assert.match(e.oneLine(), /HF_HUB_OFFLINE/);
        assert.equal(e.file, "model-00001-of-00002.safetensors");
      });
      await src.close();
    });
    // Without offline mode a miss is NOT_FOUND.
    await rejectsCkpt(openHfCache("org/absent", { cacheDir: root }), "NOT_FOUND");
  });

  test("offline truthy values", () => {
    for (const v of ["1", "ON", "yes", "True", " true "]) assert.ok(isTruthyEnv(v), v);
    for (const v of [undefined, "", "0", "off", "no", "false"]) assert.ok(!isTruthyEnv(v), String(v));
  });
});

// ---------------------------------------------------------------------------------------------------------------

// Failures the Hub client retries (refused connections, 5xx) are retried briefly here: 3 tries, 5-20 ms apart.
const FAST_RETRY = { tries: 3, backoffMs: 5, maxBackoffMs: 20 };
const FAST_RETRY_ENV = { CKPT_HUB_TRIES: "3", CKPT_HUB_BACKOFF: "0.005", CKPT_HUB_BACKOFF_MAX: "0.02" };

describe("Hub (mock server, real @huggingface/hub code path)", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir("hub");
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test("repo spec parsing and file choice", () => {
    assert.deepEqual(parseRepoSpec("org/name"), { repoId: "org/name" });
    assert.deepEqual(parseRepoSpec("meta-llama/Llama-3.1-8B@v1.0"), { repoId: "meta-llama/Llama-3.1-8B", revision: "v1.0" });
    assert.deepEqual(parseRepoSpec("org/name@refs/pr/1"), { repoId: "org/name", revision: "refs/pr/1" });
    for (const bad of ["name", "a/b/c", "org/", "/org/name", "org/na me", "org/name@", "../x", "org/-x", "org/a..b"]) {
      assert.equal(parseRepoSpec(bad), undefined, bad);
    }
    assert.ok(isCheckpointFile("config.json") && isCheckpointFile(S1) && isCheckpointFile("tokenizer.json"));
    assert.ok(!isCheckpointFile("pytorch_model.bin") && !isCheckpointFile("onnx/model.onnx") && !isCheckpointFile("model.gguf"));
    assert.ok(globToRegExp("*.safetensors").test("a/b.safetensors"));
    assert.ok(!globToRegExp("model-?.json").test("model-12.json"));
  });

  test("download into the HF cache, then offline with the server closed", async () => {
    const hub = await startMockHub({ "org/name": { sha: SHA, files: repoFiles(), refs: { v2: SHA_V2 } } }, { pageSize: 3 });
    const cacheDir = join(dir, "cache1");
    const logs: string[] = [];
    const events: string[] = [];
    let src;
    try {
      src = await openHub("org/name", { endpoint: hub.url, cacheDir, offline: false, env: {}, log: (l) => logs.push(l), onFile: (e) => events.push(e.file) });
    } catch (e) {
      await hub.close();
      throw e;
    }
    try {
      assert.equal(src.kind, "hf-cache");
      assert.equal(src.revision, SHA);
      assert.equal(src.id, "org/name");
      assert.deepEqual(src.files().sort(), ["config.json", "generation_config.json", "model.safetensors.index.json", S1, S2, "tokenizer_config.json"].sort());
      assert.equal(await src.readText("tokenizer_config.json"), "{}");
      assert.deepEqual(await src.read(S2, 0, SHARD2.length), SHARD2);
      assert.equal(await src.readText("config.json"), CONFIG);
      await rejectsCkpt(src.read("pytorch_model.bin", 0, 1), "NOT_FOUND");
    } finally {
      await src.close();
    }
    // What was fetched: nothing but the checkpoint files.
    assert.ok(!hub.bytesServed.has("pytorch_model.bin"));
    assert.ok(!hub.bytesServed.has("consolidated.safetensors"));
    assert.ok(!hub.bytesServed.has("onnx/model.onnx"));
    assert.ok(!hub.bytesServed.has("README.md"));
    assert.ok(hub.requests.some((r) => /tree\/.*cursor=3/.test(r)), "tree pagination followed");
    assert.equal(events.length, 6);
    assert.equal(logs.filter((l) => l.startsWith("Downloading ")).length, 5, "library debug lines routed to log (5 blobs)");
    // Layout: blobs/<etag>, snapshots/<sha>/<path> -> ../../blobs/<etag>, refs/main.
    const repo = repoCacheDir(cacheDir, "org/name");
    assert.equal((await fsp.readFile(join(repo, "refs", "main"), "utf8")).trim(), SHA);
    for (const [name, etag] of [
      [S1, sha256(SHARD1)],
      [S2, sha256(SHARD2)],
      ["config.json", gitSha1(Buffer.from(CONFIG))],
    ] as const) {
      const link = join(repo, "snapshots", SHA, name);
      assert.ok((await fsp.lstat(link)).isSymbolicLink(), name);
      assert.equal(await fsp.readlink(link), `../../blobs/${etag}`);
      assert.ok((await fsp.stat(join(repo, "blobs", etag))).isFile());
    }
    assert.deepEqual((await fsp.readdir(join(repo, "blobs"))).filter((f) => f.endsWith(".incomplete")), []);

    // Second open: everything cached, no file bytes move.
    const before = [...hub.bytesServed.values()].reduce((a, b) => a + b, 0);
    const again = await openHub("org/name", { endpoint: hub.url, cacheDir, offline: false, env: {} });
    assert.equal([...hub.bytesServed.values()].reduce((a, b) => a + b, 0), before);
    await again.close();

    // Another branch is a separate ref file.
    const hub2 = await startMockHub({ "org/name": { sha: SHA_V2, files: repoFiles() } });
    const v2 = await openHub("org/name@main", { endpoint: hub2.url, cacheDir, env: {}, revision: "main" }).catch(async (e) => {
      await hub2.close();
      throw e;
    });
    assert.equal(v2.revision, SHA_V2);
    await v2.close();
    await hub2.close();
    await fsp.writeFile(join(repo, "refs", "main"), SHA);

    // allowPatterns replace the default choice.
    const jsonOnly = await openHub("org/name", { endpoint: hub.url, cacheDir: join(dir, "cache-json"), env: {}, allowPatterns: ["*.json"] });
    assert.deepEqual(jsonOnly.files().sort(), ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json"]);
    await jsonOnly.close();

    await hub.close();

    // Online but unreachable, cache complete: falls back to the cache (like huggingface_hub).
    const fallbackLogs: string[] = [];
    const fb = await openHub("org/name", { endpoint: hub.url, cacheDir, env: {}, log: (l) => fallbackLogs.push(l) });
    assert.equal(fb.revision, SHA);
    assert.match(fallbackLogs.join("\n"), /unreachable/);
    await fb.close();

    // Offline, server gone: reads come from the cache.
    await withEnv({ HF_HUB_OFFLINE: "1", HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.url }, async () => {
      const off = await openSource("org/name");
      try {
        assert.equal(off.kind, "hf-cache");
        assert.equal(off.revision, SHA);
        assert.deepEqual(await off.read(S1, 0, SHARD1.length), SHARD1);
      } finally {
        await off.close();
      }
      const e = await rejectsCkpt(openSource("org/name@v2"), "OFFLINE");
      assert.match(e.oneLine(), /HF_HUB_OFFLINE/);
      await rejectsCkpt(openHubRanged("org/name"), "OFFLINE", (err) => assert.match(err.oneLine(), /HF_HUB_OFFLINE/));
      // A shard missing from the cache is a miss naming the file and the variable.
      await fsp.rm(join(repo, "snapshots", SHA, S2));
      await rejectsCkpt(openSource("org/name"), "OFFLINE", (err) => {
        assert.equal(err.file, S2);
        assert.match(err.oneLine(), /HF_HUB_OFFLINE/);
      });
    });

    // Online but unreachable: a clear HUB error with the offline hint (cache incomplete now, so no fallback).
    await withEnv({ HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.url, ...FAST_RETRY_ENV }, async () => {
      await rejectsCkpt(openSource("org/name"), "HUB", (err) => {
        assert.match(err.message, /cannot reach .*ECONNREFUSED; 3 tries/);
        assert.match(err.hint ?? "", /HF_HUB_OFFLINE/);
      });
    });
  });

  test("private repo: the token is sent and never appears in errors", async () => {
    const TOKEN = "hf_SecretToken1234567890abcdef";
    const WRONG = "hf_WrongToken0987654321zyxwvu";
    const files = repoFiles();
    const hub = await startMockHub(
      {
        "org/private": { sha: SHA, files, private: true, token: TOKEN },
        "org/broken": { sha: SHA, files, private: true, token: TOKEN, fail: { [S2]: 500 } },
      },
      { echoAuthorization: true },
    );
    try {
      const cacheDir = join(dir, "cache-private");
      // From HF_TOKEN.
      await withEnv({ HF_TOKEN: TOKEN, HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir }, async () => {
        const src = await openSource("org/private");
        assert.deepEqual(await src.read(S1, 0, 8), SHARD1.subarray(0, 8));
        await src.close();
      });
      assert.ok(hub.authorizations.length > 0 && hub.authorizations.every((a) => a === `Bearer ${TOKEN}`));

      // From the $HF_HOME/token file.
      const home = join(dir, "hfhome");
      await fsp.mkdir(home, { recursive: true });
      await fsp.writeFile(join(home, "token"), TOKEN + "\n");
      assert.equal(hubToken({ HF_HOME: home }), TOKEN);
      await withEnv({ HF_HOME: home, HF_ENDPOINT: hub.url }, async () => {
        const src = await openSource("org/private", { ranged: true });
        assert.equal(src.kind, "hub");
        assert.deepEqual(await src.read(S1, 8, 8), SHARD1.subarray(8, 16));
        await src.close();
      });

      const noSecret = (e: CkptError): void => {
        for (const text of [e.message, e.hint ?? "", e.oneLine(), String(e.stack), JSON.stringify(e), String(e.cause ?? "")]) {
          assert.ok(!text.includes(TOKEN), `token leaked: ${text}`);
          assert.ok(!text.includes(WRONG), `token leaked: ${text}`);
          assert.ok(!text.includes("SecretToken") && !text.includes("WrongToken"), `token leaked: ${text}`);
        }
      };
      // A refused token (the mock echoes it back in the error body).
      const e1 = await rejectsCkpt(openHub("org/private", { endpoint: hub.url, cacheDir: join(dir, "c2"), token: WRONG, env: {} }), "HUB", noSecret);
      assert.match(e1.hint ?? "", /token/);
      // A server error mid-download, with the right token echoed back.
      await rejectsCkpt(openHub("org/broken", { endpoint: hub.url, cacheDir: join(dir, "c3"), token: TOKEN, env: {}, retry: FAST_RETRY }), "HUB", (e) => {
        noSecret(e);
        assert.match(e.message, /500|mock failure/);
      });
      const ranged = await openHubRanged("org/broken", { endpoint: hub.url, token: TOKEN, env: {}, retry: FAST_RETRY });
      await rejectsCkpt(ranged.read(S2, 0, 8), "HUB", (e) => {
        noSecret(e);
        // one line naming the file, the byte range and the last error
        assert.equal(e.file, S2);
        assert.match(e.message, new RegExp(`ranged read of ${S2.replace(/\./g, "\\.")} \\(bytes 0-7\\) of org/broken failed: gave up after 3 tries: HTTP 500.*mock failure`));
      });
      // No token at all.
      await rejectsCkpt(openHub("org/private", { endpoint: hub.url, cacheDir: join(dir, "c4"), env: {} }), "HUB", (e) => {
        assert.match(e.hint ?? "", /HF_TOKEN/);
      });
      // A token the library refuses locally.
      await rejectsCkpt(openHub("org/private", { endpoint: hub.url, cacheDir: join(dir, "c5"), token: "notatoken123", env: {} }), "HUB", (e) => {
        assert.ok(!e.oneLine().includes("notatoken123"));
      });
    } finally {
      await hub.close();
    }
  });

  test("ranged source reads only the requested bytes", async () => {
    const hub = await startMockHub({ "org/name": { sha: SHA, files: repoFiles() } });
    try {
      const src = await openHubRanged("org/name", { endpoint: hub.url, env: {} });
      try {
        assert.equal(src.kind, "hub");
        assert.equal(src.revision, SHA);
        assert.equal(src.localPath(S1), undefined);
        assert.ok(src.files().includes(S1) && src.files().includes("onnx/model.onnx"));
        assert.equal(hub.bytesServed.size, 0, "listing moves no file bytes");
        assert.equal(await src.size(S1), SHARD1.length);
        const probe = hub.bytesServed.get(S1) ?? 0; // the size probe (Range: bytes=0-0)
        assert.ok(probe <= 1);
        const got = await src.read(S1, 8, 16);
        assert.deepEqual(got, SHARD1.subarray(8, 24));
        assert.equal(hub.bytesServed.get(S1), probe + 16);
        assert.ok(hub.requests.some((r) => r.includes(`/resolve/${SHA}/${S1}`)));
        const tail = await src.read(S1, SHARD1.length - 4, 4);
        assert.deepEqual(tail, SHARD1.subarray(SHARD1.length - 4));
        assert.equal(hub.bytesServed.get(S1), probe + 20);
        assert.ok(hub.bytesServed.get(S1)! < SHARD1.length);
        assert.ok(!hub.bytesServed.has(S2));
        await rejectsCkpt(src.read(S1, SHARD1.length - 2, 4), "IO", (e) => assert.equal(e.file, S1));
        await rejectsCkpt(src.read("nope.safetensors", 0, 1), "NOT_FOUND");
        assert.equal(await src.readText("config.json"), CONFIG);
        assert.equal(await src.readText("absent.json"), undefined);
      } finally {
        await src.close();
      }
    } finally {
      await hub.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("config.json", () => {
  test("read and validate", async () => {
    const dir = await tempDir("config");
    try {
      await fsp.writeFile(join(dir, "config.json"), CONFIG);
      const src = await openLocal(dir);
      const cfg = await readConfig(src);
      assert.ok(cfg);
      assert.deepEqual(
        validateConfigFields(cfg, ["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"], "config.json", ["num_key_value_heads", "head_dim"]),
        { hidden_size: 2, num_attention_heads: 1, num_hidden_layers: 1, vocab_size: 4 },
      );
      await src.close();

      const e = throwsCkpt(
        () =>
          validateConfigFields(
            { hidden_size: "4096", num_attention_heads: 0, num_hidden_layers: 2.5, head_dim: -1, num_key_value_heads: 8 },
            ["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"],
            "config.json",
            ["num_key_value_heads", "head_dim"],
          ),
        "CONFIG",
      );
      assert.equal(e.file, "config.json");
      for (const f of ["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size (missing)", "head_dim"]) assert.ok(e.message.includes(f), f);
      assert.ok(!e.message.includes("num_key_value_heads"));

      await fsp.writeFile(join(dir, "config.json"), "{ not json");
      const bad = await openLocal(dir);
      await rejectsCkpt(readConfig(bad), "CONFIG", (err) => assert.equal(err.file, "config.json"));
      await fsp.writeFile(join(dir, "config.json"), "[1,2]");
      await rejectsCkpt(readConfig(bad), "CONFIG");
      await bad.close();
      await fsp.rm(join(dir, "config.json"));
      const empty = await openLocal(dir);
      assert.equal(await readConfig(empty), undefined);
      await empty.close();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
