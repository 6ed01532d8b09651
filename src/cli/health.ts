// `ckpt inspect <src> --health [--f16] [--json]`: prints the report; a failing report exits non-zero (HEALTH).
import { makeReporter } from "./progress.js";
import { CkptError } from "../errors.js";
import { formatHealth } from "../health/report.js";
import { runHealth } from "../health/index.js";

export async function healthCommand(a: { src?: unknown; f16?: unknown; json?: boolean; quiet?: boolean }, out: (s: string) => void): Promise<void> {
  const rep = makeReporter("health", a);
  let r;
  try {
    r = await runHealth(String(a.src), { f16: a.f16 === true, onProgress: (e) => rep.update(e.bytesDone, e.bytesTotal) });
  } finally {
    rep.stop();
  }
  if (a.json) out(JSON.stringify(r, null, 1));
  else out(formatHealth(r));
  if (!r.ok) {
    const codes = [...new Set(r.findings.filter((f) => f.severity !== "info").map((f) => f.code))].join(", ");
    throw new CkptError("HEALTH", `${r.counts.error} error(s), ${r.counts.warning} warning(s): ${codes}`, { file: r.source });
  }
}
