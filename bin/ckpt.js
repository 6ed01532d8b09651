#!/usr/bin/env node
// CommonJS on purpose (bin/package.json): libuv's thread pool, which runs the native copy lane's pieces and every
// asynchronous fs call, reads UV_THREADPOOL_SIZE once when it starts, and an ES-module entry starts it (to load
// itself) before its first line runs. The default 4 threads would cap the lane at 4 pieces at once on any machine.
const { availableParallelism } = require("node:os");

if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(Math.max(4, availableParallelism() + 2));
// `ckpt … | head`: a reader that closes the pipe early ends the output, not the run with a stack trace.
for (const stream of [process.stdout, process.stderr]) stream.on("error", (e) => { if (e.code !== "EPIPE") throw e; });
import("../dist/src/cli/main.js").then(
  async ({ main }) => { process.exitCode = await main(); },
  (e) => { process.stderr.write(`ckpt: cannot start: ${e && e.message ? e.message : e}\n`); process.exitCode = 1; },
);
