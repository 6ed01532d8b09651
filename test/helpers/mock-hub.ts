// A local stand-in for the Hugging Face Hub, enough for @huggingface/hub 2.17.5 (see spec safetensors.md Appendix):
// revision API, tree listing (paginated with a Link header), paths-info (POST → array), resolve/raw (GET and HEAD,
// Range → 206 + Content-Range, ETag, X-Repo-Commit). Counts the requests and the body bytes served per file path.
//
// Network faults, injected at random (MockHubOptions.faults, seeded) or in a given order (MockHub.script): bodies
// dropped mid-transfer, short bodies, connections reset before an answer, 429 with Retry-After, 503, slow bodies
// and bodies that stall. An endpoint `<url>/c/<name>` is the same Hub seen by client `<name>`: requests, bytes and
// faults are counted per client (one per simulated machine).
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { prng } from "../../src/fixtures/tiny-llama.js";

export interface MockRepo {
  /** Commit sha (40 hex) that `main` points at. */
  sha: string;
  files: Record<string, Buffer | string>;
  /** Requests need `Authorization: Bearer <token>` (any `hf_…` token when `token` is unset); 401 otherwise. */
  private?: boolean;
  token?: string;
  /** Extra branch/tag → sha (main → sha is implied). */
  refs?: Record<string, string>;
  /** Paths whose resolve requests fail with this HTTP status (to test error paths). */
  fail?: Record<string, number>;
}

export type FaultKind = "drop" | "short" | "reset" | "throttle" | "unavailable" | "slow" | "stall";

export interface FaultPlan {
  /** Each a fraction of eligible requests. drop: headers and half the body, then the socket is destroyed. */
  drop?: number;
  /** 206/200 with a Content-Length (and body) of half what was asked; the Content-Range still names the whole range. */
  short?: number;
  /** The socket is destroyed before any answer. */
  reset?: number;
  /** 429 with `Retry-After: retryAfter` (seconds, default 1). */
  throttle?: number;
  retryAfter?: number;
  /** 503. */
  unavailable?: number;
  /** The body trickles out in 8 parts, slowMs apart (default 20). */
  slow?: number;
  slowMs?: number;
  /** Headers and half the body, then nothing until the server closes. */
  stall?: number;
  /** Faults hit API requests (revision, tree, paths-info) too, not only file downloads (resolve/raw GETs). */
  api?: boolean;
  /** Seed of the fault draws (default 1). */
  seed?: number;
}

export interface MockHubOptions {
  /** Entries per tree page (default: everything on one page). */
  pageSize?: number;
  /** Error bodies repeat the request's Authorization header, like a careless proxy would (to test redaction). */
  echoAuthorization?: boolean;
  faults?: FaultPlan;
}

export interface ClientCounts {
  requests: number;
  /** Body bytes of resolve/raw GETs sent to this client (partial bodies of faulted requests included). */
  bytes: number;
  faults: Partial<Record<FaultKind, number>>;
}

export interface MockRequest {
  method: string;
  /** The path after any `/c/<name>` prefix, with the query. */
  url: string;
  client: string;
  range?: string;
  fault?: FaultKind;
}

export interface MockHub {
  url: string;
  close(): Promise<void>;
  /** Body bytes served by resolve/raw GETs, per file path in the repo. */
  bytesServed: Map<string, number>;
  /** `METHOD /url` of every request, in order. */
  requests: string[];
  /** The Authorization header of every request ("" when absent), in order. */
  authorizations: string[];
  /** Every request with its client, Range header and injected fault. */
  log: MockRequest[];
  /** Per client (`/c/<name>` prefix; "" without one). */
  clients: Map<string, ClientCounts>;
  /** Faults injected, by kind. */
  faultCounts: Partial<Record<FaultKind, number>>;
  /** Faults for the next file downloads (resolve/raw GETs; of `path` only, when given), in order, before any random ones. */
  script: (FaultKind | { fault: FaultKind; path: string })[];
  /** Requests being answered right now, and the most there ever were at once. */
  inFlight: { now: number; max: number };
}

interface FileEntry {
  path: string;
  data: Buffer;
  oid: string; // git blob sha1
  lfs?: { oid: string; size: number; pointerSize: number };
}

function gitBlobSha1(data: Buffer): string {
  return createHash("sha1").update(`blob ${data.length}\0`).update(data).digest("hex");
}

function prepare(repo: MockRepo): Map<string, FileEntry> {
  const out = new Map<string, FileEntry>();
  for (const [path, content] of Object.entries(repo.files)) {
    const data = typeof content === "string" ? Buffer.from(content) : content;
    const e: FileEntry = { path, data, oid: gitBlobSha1(data) };
    if (path.endsWith(".safetensors") || path.endsWith(".bin")) {
      // Stored with Git LFS on the real Hub: the blob is named after the sha256 of the content.
      const sha256 = createHash("sha256").update(data).digest("hex");
      const pointer = `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${data.length}\n`;
      e.lfs = { oid: sha256, size: data.length, pointerSize: pointer.length };
      e.oid = gitBlobSha1(Buffer.from(pointer));
    }
    out.set(path, e);
  }
  return out;
}

function dirsOf(paths: Iterable<string>): Set<string> {
  const dirs = new Set<string>();
  for (const p of paths) {
    const parts = p.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  return dirs;
}

function treeEntry(e: FileEntry): Record<string, unknown> {
  return { type: "file", oid: e.oid, size: e.lfs ? e.lfs.size : e.data.length, path: e.path, ...(e.lfs ? { lfs: e.lfs } : {}) };
}

function parseRange(h: string | undefined, size: number): [number, number] | "bad" | undefined {
  if (!h) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(h.trim());
  if (!m || (m[1] === "" && m[2] === "")) return "bad";
  let a: number;
  let b: number;
  if (m[1] === "") {
    const n = Number(m[2]);
    a = Math.max(0, size - n);
    b = size - 1;
  } else {
    a = Number(m[1]);
    b = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (a >= size || b < a) return "bad";
  return [a, b];
}

export async function startMockHub(repos: Record<string, MockRepo>, opts: MockHubOptions = {}): Promise<MockHub> {
  const prepared = new Map(Object.entries(repos).map(([id, r]) => [id, { repo: r, files: prepare(r) }]));
  const bytesServed = new Map<string, number>();
  const requests: string[] = [];
  const authorizations: string[] = [];
  const log: MockRequest[] = [];
  const clients = new Map<string, ClientCounts>();
  const faultCounts: Partial<Record<FaultKind, number>> = {};
  const script: MockHub["script"] = [];
  const inFlight = { now: 0, max: 0 };
  const plan = opts.faults ?? {};
  // seeded, so a fault plan gives the same draws run after run (fixture PRNG: [-1, 1) → [0, 1))
  const rnd = prng(plan.seed ?? 1);
  const draw = () => (rnd() + 1) / 2;
  const KINDS: FaultKind[] = ["drop", "short", "reset", "throttle", "unavailable", "slow", "stall"];
  const stalled = new Set<ServerResponse>();

  const server = createServer((req, res) => {
    inFlight.now++;
    inFlight.max = Math.max(inFlight.max, inFlight.now);
    let counted = true;
    const done = () => {
      if (counted) inFlight.now--;
      counted = false;
    };
    res.on("finish", done);
    res.on("close", done);
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      try {
        handle(req, res, Buffer.concat(chunks));
      } catch (e) {
        sendJson(res, 500, { error: `mock hub: ${e instanceof Error ? e.message : String(e)}` });
      }
    });
  });

  const clientOf = (name: string): ClientCounts => {
    let c = clients.get(name);
    if (!c) clients.set(name, (c = { requests: 0, bytes: 0, faults: {} }));
    return c;
  };

  /** The fault for this request: scripted first (file downloads only), else a draw from the plan. */
  const pickFault = (download: boolean, path: string): FaultKind | undefined => {
    const i = download ? script.findIndex((f) => typeof f === "string" || f.path === path) : -1;
    if (i >= 0) {
      const f = script.splice(i, 1)[0]!;
      return typeof f === "string" ? f : f.fault;
    }
    if (!download && !plan.api) return undefined;
    const x = draw();
    let acc = 0;
    for (const k of KINDS) {
      if (!download && (k === "drop" || k === "short" || k === "slow" || k === "stall")) continue;
      acc += plan[k] ?? 0;
      if (x < acc) return k;
    }
    return undefined;
  };

  /** Sends a file body (the whole slice, or the fault's version of it), counting the bytes that left. */
  const sendBody = (res: ServerResponse, slice: Buffer, fault: FaultKind | undefined, count: (n: number) => void): void => {
    const half = slice.subarray(0, Math.floor(slice.length / 2));
    if (fault === "drop") {
      count(half.length);
      res.write(half, () => res.socket?.destroy());
      return;
    }
    if (fault === "stall") {
      count(half.length);
      stalled.add(res);
      res.write(half);
      return;
    }
    if (fault === "slow") {
      const step = Math.max(1, Math.ceil(slice.length / 8));
      let at = 0;
      const next = (): void => {
        if (res.destroyed) return;
        const part = slice.subarray(at, at + step);
        at += part.length;
        count(part.length);
        if (at >= slice.length) return void res.end(part);
        res.write(part);
        setTimeout(next, plan.slowMs ?? 20);
      };
      return next();
    }
    count(slice.length);
    res.end(slice);
  };
  const sendJson = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    const data = Buffer.from(JSON.stringify(body));
    res.writeHead(status, { "Content-Type": "application/json; charset=utf-8", "Content-Length": String(data.length), ...headers });
    res.end(data);
  };

  const fail = (res: ServerResponse, req: IncomingMessage, status: number, code: string, message: string): void => {
    const auth = req.headers.authorization;
    const echo = opts.echoAuthorization && auth ? ` (request had Authorization: ${auth})` : "";
    sendJson(res, status, { error: message + echo }, { "X-Error-Code": code, "X-Error-Message": message });
  };

  function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    const method = req.method ?? "GET";
    const m = /^\/c\/([^/]+)(\/.*)$/.exec(req.url ?? "/");
    const client = m ? decodeURIComponent(m[1]!) : "";
    const prefix = m ? `/c/${m[1]}` : "";
    const url = m ? m[2]! : req.url ?? "/";
    requests.push(`${method} ${url}`);
    authorizations.push(req.headers.authorization ?? "");
    const counts = clientOf(client);
    counts.requests++;
    const u = new URL(url, "http://127.0.0.1");
    const segs = u.pathname.split("/").slice(1).map((s) => decodeURIComponent(s));
    const download = (segs[2] === "resolve" || segs[2] === "raw") && method === "GET";
    const fault = pickFault(download, segs.slice(4).join("/"));
    const entryLog: MockRequest = { method, url, client, ...(req.headers.range ? { range: req.headers.range } : {}), ...(fault ? { fault } : {}) };
    log.push(entryLog);
    if (fault) {
      faultCounts[fault] = (faultCounts[fault] ?? 0) + 1;
      counts.faults[fault] = (counts.faults[fault] ?? 0) + 1;
    }
    if (fault === "reset") return void req.socket.destroy();
    if (fault === "throttle") return sendJson(res, 429, { error: "Too Many Requests (mock)" }, { "Retry-After": String(plan.retryAfter ?? 1) });
    if (fault === "unavailable") return sendJson(res, 503, { error: "Service Unavailable (mock)" });

    // /api/models/{org}/{name}/{revision|tree|paths-info}/{rev}[/{path}]  or  /{org}/{name}/{resolve|raw}/{rev}/{path}
    let api = false;
    let rest = segs;
    if (segs[0] === "api" && segs[1] === "models") {
      api = true;
      rest = segs.slice(2);
    }
    const repoId = `${rest[0]}/${rest[1]}`;
    const action = rest[2];
    const rev = rest[3];
    const path = rest.slice(4).join("/");
    const entry = prepared.get(repoId);
    if (!entry || rev === undefined || action === undefined) {
      return fail(res, req, 404, "RepoNotFound", "Repository not found");
    }
    const { repo, files } = entry;
    if (repo.private) {
      const auth = req.headers.authorization ?? "";
      const m = /^Bearer (hf_\S+)$/.exec(auth);
      if (!m || (repo.token !== undefined && m[1] !== repo.token)) {
        return fail(res, req, 401, "RepoNotFound", "Invalid credentials in Authorization header");
      }
    }
    const refs: Record<string, string> = { main: repo.sha, ...(repo.refs ?? {}) };
    const sha = /^[0-9a-f]{40}$/.test(rev) ? rev : rev === "HEAD" ? repo.sha : refs[rev];
    if (sha === undefined || (sha !== repo.sha && !Object.values(refs).includes(sha))) {
      return fail(res, req, 404, "RevisionNotFound", `Invalid rev id: ${rev}`);
    }

    if (api && action === "revision" && method === "GET") {
      return sendJson(res, 200, {
        _id: `mock-${repoId}`,
        id: repoId,
        sha,
        private: !!repo.private,
        gated: false,
        downloads: 0,
        likes: 0,
        lastModified: "2025-01-01T00:00:00.000Z",
        siblings: [...files.keys()].map((rfilename) => ({ rfilename })),
      });
    }

    if (api && action === "tree" && method === "GET") {
      const recursive = u.searchParams.get("recursive") === "true";
      const prefix = path === "" ? "" : path + "/";
      const all: Record<string, unknown>[] = [];
      const dirs = dirsOf(files.keys());
      for (const d of [...dirs].sort()) {
        if (!d.startsWith(prefix)) continue;
        if (!recursive && d.slice(prefix.length).includes("/")) continue;
        all.push({ type: "directory", oid: gitBlobSha1(Buffer.from(d)), size: 0, path: d });
      }
      for (const e of [...files.values()].sort((a, b) => (a.path < b.path ? -1 : 1))) {
        if (!e.path.startsWith(prefix)) continue;
        if (!recursive && e.path.slice(prefix.length).includes("/")) continue;
        all.push(treeEntry(e));
      }
      if (path !== "" && !dirs.has(path)) return fail(res, req, 404, "EntryNotFound", `${path} does not exist`);
      const cursor = Number(u.searchParams.get("cursor") ?? "0");
      const size = opts.pageSize ?? all.length;
      const page = all.slice(cursor, cursor + size);
      const headers: Record<string, string> = {};
      if (cursor + size < all.length) {
        const next = new URL(u.toString());
        next.searchParams.set("cursor", String(cursor + size));
        const host = req.headers.host ?? "127.0.0.1";
        headers.Link = `<http://${host}${prefix}${next.pathname}${next.search}>; rel="next"`;
      }
      return sendJson(res, 200, page, headers);
    }

    if (api && action === "paths-info" && method === "POST") {
      let parsed: { paths?: unknown; expand?: unknown };
      try {
        parsed = JSON.parse(body.toString("utf8") || "{}") as { paths?: unknown; expand?: unknown };
      } catch {
        return fail(res, req, 400, "BadRequest", "invalid JSON body");
      }
      const paths = Array.isArray(parsed.paths) ? parsed.paths.map(String) : [];
      const dirs = dirsOf(files.keys());
      const out: Record<string, unknown>[] = [];
      for (const p of paths) {
        const e = files.get(p);
        const lastCommit = { id: sha, title: "mock commit", date: "2025-01-01T00:00:00.000Z" };
        if (e) out.push({ ...treeEntry(e), ...(parsed.expand ? { lastCommit, securityFileStatus: { status: "safe" } } : {}) });
        else if (dirs.has(p)) out.push({ type: "directory", oid: gitBlobSha1(Buffer.from(p)), size: 0, path: p });
      }
      return sendJson(res, 200, out);
    }

    if (!api && (action === "resolve" || action === "raw") && (method === "GET" || method === "HEAD")) {
      const e = files.get(path);
      if (!e) return fail(res, req, 404, "EntryNotFound", `${path} does not exist on "${rev}"`);
      const failure = repo.fail?.[path];
      if (failure !== undefined) return fail(res, req, failure, "MockFailure", `mock failure for ${path}`);
      const data = action === "raw" && e.lfs
        ? Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${e.lfs.oid}\nsize ${e.lfs.size}\n`)
        : e.data;
      const etag = action === "resolve" && e.lfs ? e.lfs.oid : e.oid;
      const headers: Record<string, string> = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        ETag: `"${etag}"`,
        "X-Repo-Commit": sha,
      };
      if (action === "resolve" && e.lfs) {
        headers["X-Linked-ETag"] = `"${e.lfs.oid}"`;
        headers["X-Linked-Size"] = String(e.lfs.size);
      }
      const range = parseRange(req.headers.range, data.length);
      if (range === "bad") {
        res.writeHead(416, { ...headers, "Content-Range": `bytes */${data.length}` });
        return void res.end();
      }
      let status = 200;
      let slice = data;
      if (range) {
        status = 206;
        slice = data.subarray(range[0], range[1] + 1);
        headers["Content-Range"] = `bytes ${range[0]}-${range[1]}/${data.length}`;
      }
      if (fault === "short" && method === "GET") slice = slice.subarray(0, Math.floor(slice.length / 2));
      headers["Content-Length"] = String(slice.length);
      res.writeHead(status, headers);
      if (method === "HEAD") return void res.end();
      return sendBody(res, slice, method === "GET" ? fault : undefined, (n) => {
        bytesServed.set(path, (bytesServed.get(path) ?? 0) + n);
        counts.bytes += n;
      });
    }

    return fail(res, req, 404, "NotFound", `mock hub: no route for ${method} ${u.pathname}`);
  }

  // Idle connections stay open long: a client reusing one the server just timed out would see a reset that no fault
  // caused, and the fault counts would no longer add up.
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    bytesServed,
    requests,
    authorizations,
    log,
    clients,
    faultCounts,
    script,
    inFlight,
    close: () =>
      new Promise<void>((resolve) => {
        for (const r of stalled) r.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
