// The Hub client against a mock Hub that injects network faults: every kind of transient failure is retried, a body
// cut short is resumed for the bytes still missing (never accepted short), Retry-After is honoured, the tries and the
// deadline bound a request that keeps failing (one line naming file, byte range and last error), downloads into the
// HF cache resume a partial blob, and the requests in flight stay within the configured bound.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CkptError } from "../src/errors.js";
import { openHub, openHubRanged } from "../src/sources/hub.js";
import { hubStats, resetHubStats, retryPolicy, parseRetryAfter, DEFAULT_RETRY } from "../src/sources/hub-http.js";
import { repoCacheDir } from "../src/sources/hf-cache.js";
import { startMockHub, type MockHub } from "./helpers/mock-hub.js";

const SHA = "a".repeat(40);
const BIG = randomBytes(1 << 20); // 1 MiB of weights
const CONFIG = JSON.stringify({ model_type: "llama", hidden_size: 8 });
const files = { "model.safetensors": BIG, "config.json": CONFIG };
// Backoff of a few ms; a stall is noticed after 300 ms.
const FAST = { tries: 6, backoffMs: 2, maxBackoffMs: 10, stallMs: 300 };
const tmp = mkdtempSync(join(tmpdir(), "ckpt-hub-faults-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

async function rejectsHub(p: Promise<unknown>): Promise<CkptError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof CkptError, String(e));
    assert.equal(e.code, "HUB", e.oneLine());
    return e;
  }
  assert.fail("expected a HUB error");
}

describe("Hub client under network faults", () => {
  let hub: MockHub;
  before(async () => {
    hub = await startMockHub({ "org/m": { sha: SHA, files }, "org/down": { sha: SHA, files, fail: { "model.safetensors": 503 } } });
  });
  after(() => hub.close());

  test("settings: defaults, CKPT_HUB_* variables in seconds, malformed values refused naming the variable", () => {
    assert.deepEqual(retryPolicy({}), DEFAULT_RETRY);
    const p = retryPolicy({ CKPT_HUB_TRIES: "3", CKPT_HUB_DEADLINE: "1.5", CKPT_HUB_BACKOFF: "0.25", CKPT_HUB_TIMEOUT: "7", CKPT_HUB_CONCURRENCY: "2", CKPT_HUB_BACKOFF_MAX: "4" });
    assert.deepEqual(p, { tries: 3, deadlineMs: 1500, backoffMs: 250, stallMs: 7000, concurrency: 2, maxBackoffMs: 4000 });
    assert.equal(retryPolicy({ CKPT_HUB_TRIES: "3" }, { tries: 5 }).tries, 5);
    for (const [k, v] of [["CKPT_HUB_TRIES", "0"], ["CKPT_HUB_CONCURRENCY", "1.5"], ["CKPT_HUB_DEADLINE", "-1"], ["CKPT_HUB_TIMEOUT", "soon"]]) {
      assert.throws(() => retryPolicy({ [k!]: v }), (e: unknown) => e instanceof CkptError && e.code === "USAGE" && e.message.includes(k!));
    }
    assert.equal(parseRetryAfter("3"), 3000);
    assert.ok((parseRetryAfter(new Date(Date.now() + 60_000).toUTCString()) ?? 0) > 50_000);
    assert.equal(parseRetryAfter(null), undefined);
  });

  test("a ranged read through a drop, a short body, 429 + Retry-After, 503, a reset and a stall: exact bytes, the rest resumed", async () => {
    const src = await openHubRanged("org/m", { endpoint: hub.url, env: {}, retry: FAST });
    try {
      hub.log.length = 0;
      resetHubStats();
      hub.script.push("drop", "short", "throttle", "unavailable", "reset", "stall");
      const t0 = performance.now();
      const got = await src.read("model.safetensors", 1000, 400_000);
      const ms = performance.now() - t0;
      assert.ok(got.equals(BIG.subarray(1000, 401_000)), "bytes are exact");
      assert.ok(ms >= 1000, `waited the 1 s Retry-After (${ms.toFixed(0)} ms)`);
      const ranges = hub.log.filter((r) => r.url.includes("/resolve/")).map((r) => [r.range, r.fault ?? "ok"]);
      // the drop sent 200000 bytes, the short body 100000 more: each retry asks only for what is still missing
      assert.deepEqual(ranges, [
        ["bytes=1000-400999", "drop"],
        ["bytes=201000-400999", "short"],
        ["bytes=301000-400999", "throttle"],
        ["bytes=301000-400999", "unavailable"],
        ["bytes=301000-400999", "reset"],
        ["bytes=301000-400999", "stall"],
        ["bytes=351000-400999", "ok"],
      ]);
      const s = hubStats();
      assert.deepEqual({ requests: s.requests, retried: s.retried, dropped: s.dropped, throttled: s.throttled, serverErrors: s.serverErrors, resets: s.resets, timeouts: s.timeouts, failed: s.failed },
        { requests: 7, retried: 6, dropped: 2, throttled: 1, serverErrors: 1, resets: 1, timeouts: 1, failed: 0 });
      assert.equal(s.bytes, 400_000, "every byte received once");
    } finally {
      await src.close();
    }
  });

  test("a request that keeps failing gives up after the tries, in one line naming file, byte range and last error", async () => {
    const src = await openHubRanged("org/down", { endpoint: hub.url, env: {}, retry: { ...FAST, tries: 3 } });
    const e = await rejectsHub(src.read("model.safetensors", 4096, 100));
    assert.equal(e.file, "model.safetensors");
    assert.match(e.oneLine(), /ranged read of model\.safetensors \(bytes 4096-4195\) of org\/down failed: gave up after 3 tries: HTTP 503.*mock failure/);
    assert.ok(!e.oneLine().includes("\n"));
    assert.match(e.hint ?? "", /CKPT_HUB_TRIES/);
  });

  test("a Retry-After beyond the deadline fails at once instead of waiting", async () => {
    const slow = await startMockHub({ "org/m": { sha: SHA, files } }, { faults: { throttle: 1, retryAfter: 3600 } });
    try {
      const src = await openHubRanged("org/m", { endpoint: slow.url, env: {}, retry: { ...FAST, deadlineMs: 2000 } });
      const t0 = performance.now();
      slow.script.length = 0;
      const e = await rejectsHub(src.read("model.safetensors", 0, 10));
      assert.ok(performance.now() - t0 < 1500);
      assert.match(e.message, /the server asked to wait 3600 s more.*HTTP 429/);
    } finally {
      await slow.close();
    }
  });

  test("API calls (revision, tree) are retried through resets, 429 and 503", async () => {
    const flaky = await startMockHub({ "org/m": { sha: SHA, files } }, { faults: { api: true, reset: 0.2, throttle: 0.15, unavailable: 0.25, retryAfter: 0, seed: 7 } });
    try {
      resetHubStats();
      for (let i = 0; i < 4; i++) {
        const src = await openHubRanged("org/m", { endpoint: flaky.url, env: {}, retry: { ...FAST, tries: 12 } });
        assert.equal(src.revision, SHA);
        assert.equal(await src.readText("config.json"), CONFIG);
        await src.close();
      }
      const injected = (flaky.faultCounts.reset ?? 0) + (flaky.faultCounts.throttle ?? 0) + (flaky.faultCounts.unavailable ?? 0);
      assert.ok(injected > 0, "faults were injected");
      assert.equal(hubStats().retried, injected, "each fault cost one retry");
    } finally {
      await flaky.close();
    }
  });

  test("a download into the HF cache resumes the partial blob with a Range request, through a drop mid-body", async () => {
    const cacheDir = join(tmp, "cache");
    const blobs = join(repoCacheDir(cacheDir, "org/m"), "blobs");
    const etag = createHash("sha256").update(BIG).digest("hex");
    await fsp.mkdir(blobs, { recursive: true });
    await fsp.writeFile(join(blobs, `${etag}.incomplete`), BIG.subarray(0, 300_000)); // an earlier run's partial download
    hub.log.length = 0;
    hub.bytesServed.clear();
    hub.script.push({ fault: "drop", path: "model.safetensors" });
    const lines: string[] = [];
    const src = await openHub("org/m", { endpoint: hub.url, cacheDir, env: {}, retry: FAST, log: (l) => lines.push(l) });
    try {
      assert.ok((await src.read("model.safetensors", 0, BIG.length)).equals(BIG));
    } finally {
      await src.close();
    }
    const gets = hub.log.filter((r) => r.url.includes("/resolve/") && r.url.endsWith("model.safetensors")).map((r) => [r.range, r.fault ?? "ok"]);
    // The mock sends half of the body, then drops the connection; bytes still in flight when it drops may be lost
    // (a loaded machine loses some), so the retry starts somewhere after the partial blob and at most at the drop.
    const dropAt = 300_000 + Math.floor((BIG.length - 300_000) / 2);
    assert.equal(gets.length, 2, JSON.stringify(gets));
    assert.deepEqual(gets[0], ["bytes=300000-1048575", "drop"]);
    const resumedAt = Number(/^bytes=(\d+)-1048575$/.exec(String(gets[1]![0]))?.[1]);
    assert.equal(gets[1]![1], "ok");
    assert.ok(resumedAt > 300_000 && resumedAt <= dropAt, `second request resumes inside the dropped body: ${gets[1]![0]}`);
    // only what was lost in flight is downloaded twice
    assert.equal(hub.bytesServed.get("model.safetensors"), (dropAt - 300_000) + (BIG.length - resumedAt), "no byte received downloaded twice");
    assert.match(lines.join("\n"), /resuming at byte 300000 of 1048576/);
    assert.deepEqual((await fsp.readdir(blobs)).sort(), [createHash("sha1").update(`blob ${CONFIG.length}\0`).update(CONFIG).digest("hex"), etag].sort());
  });

  test("an aborted signal (Ctrl-C) ends a read stuck on a stalled body, and one waiting out a Retry-After, at once", async () => {
    for (const fault of ["stall", "throttle"] as const) {
      const controller = new AbortController();
      const src = await openHubRanged("org/m", { endpoint: hub.url, env: {}, retry: { ...FAST, stallMs: 30_000 }, signal: controller.signal });
      hub.script.push(fault);
      const t0 = performance.now();
      setTimeout(() => controller.abort(), 200);
      await assert.rejects(src.read("model.safetensors", 0, 100_000));
      assert.ok(performance.now() - t0 < 900, `${fault}: stopped ${(performance.now() - t0).toFixed(0)} ms after the start`);
      await src.close();
    }
  });

  test("requests in flight stay within CKPT_HUB_CONCURRENCY", async () => {
    // every body takes ~40 ms, so 40 reads asked for at once overlap unless the client holds them back
    const slow = await startMockHub({ "org/m": { sha: SHA, files } }, { faults: { slow: 1, slowMs: 5 } });
    try {
      const src = await openHubRanged("org/m", { endpoint: slow.url, env: { CKPT_HUB_CONCURRENCY: "3" } });
      slow.inFlight.max = 0;
      const parts = await Promise.all(Array.from({ length: 40 }, (_, i) => src.read("model.safetensors", i * 20_000, 20_000)));
      assert.ok(Buffer.concat(parts).equals(BIG.subarray(0, 800_000)));
      assert.equal(slow.inFlight.max, 3, "three at once, never more");
      await src.close();
    } finally {
      await slow.close();
    }
  });
});
