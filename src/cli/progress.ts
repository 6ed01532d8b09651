// Progress reporting: a cli-progress bar on a TTY stderr, line-delimited JSON events with --json, else nothing.
import { createRequire } from "node:module";
import type cliProgressTypes from "cli-progress";
import { fmtBytes } from "../util/format.js";

export interface Reporter {
  update(done: number, total: number, extra?: Record<string, unknown>): void;
  stop(): void;
}

export function makeReporter(label: string, opts: { json?: boolean; quiet?: boolean }): Reporter {
  if (opts.json) {
    let last = 0;
    return {
      update(done, total, extra) {
        const now = Date.now();
        if (done < total && now - last < 200) return;
        last = now;
        process.stderr.write(JSON.stringify({ event: "progress", phase: label, bytesDone: done, bytesTotal: total, ...extra }) + "\n");
      },
      stop() {},
    };
  }
  if (opts.quiet || !process.stderr.isTTY) return { update() {}, stop() {} };
  // cli-progress (17 modules) loads only when a bar is drawn: --quiet, --json and piped runs never pay for it.
  const cliProgress = createRequire(import.meta.url)("cli-progress") as typeof cliProgressTypes;
  const started = Date.now();
  const bar = new cliProgress.SingleBar({
    format: `${label} [{bar}] {percentage}% | {doneH}/{totalH} | {rate}/s | ETA {eta_formatted} | {tensors}`,
    stream: process.stderr,
    hideCursor: true,
    clearOnComplete: true,
  }, cliProgress.Presets.shades_classic);
  let startedBar = false;
  return {
    update(done, total, extra) {
      const secs = Math.max(1e-3, (Date.now() - started) / 1000);
      const payload = { doneH: fmtBytes(done), totalH: fmtBytes(total), rate: fmtBytes(done / secs), tensors: extra?.tensors ?? "" };
      if (!startedBar) { bar.start(Math.max(1, total), done, payload); startedBar = true; }
      else bar.update(done, payload);
    },
    stop() { if (startedBar) bar.stop(); },
  };
}
