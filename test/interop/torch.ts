// Harness for the PyTorch interop suite: runs Python scripts inside the cached Debian roots that
// test/interop/setup-torch-root.sh builds (trixie: PyTorch 2.6, sid: PyTorch 2.14). Python is test tooling only.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";

export type Suite = "trixie" | "sid";
export const SUITES: Suite[] = ["trixie", "sid"];

export interface TorchEnv {
  suite: Suite;
  root: string;
  /** A fresh folder visible to both sides: `host` path here, `guest` path inside the root. */
  tmpdir(): { host: string; guest: string; cleanup(): void };
  /** Runs `python3 -c script args…` in the root; rejects with stderr when it exits non-zero. */
  python(script: string, args?: string[], opts?: PythonOptions): Promise<string>;
  /** Runs `python3 <guest path> args…` (needed by torch.multiprocessing, which re-imports the main file). */
  pythonFile(guestPath: string, args?: string[], opts?: PythonOptions): Promise<string>;
}

export interface PythonOptions {
  timeoutMs?: number;
  /** Extra environment (e.g. the judge kit's PYTHONPATH). */
  env?: Record<string, string>;
}

/** Environment for TorchTitan's models in the sid root (installed by setup-torch-root.sh): stubs first. */
export const JUDGE_ENV: Record<string, string> = { PYTHONPATH: "/opt/stubs:/opt/spmd:/opt/tt:/opt/peft:/opt/diffusers", TORCHDYNAMO_DISABLE: "1" };

/** True when the sid root carries the judge kit (TorchTitan + transformers). */
export function hasJudgeKit(env: TorchEnv): boolean {
  return env.suite === "sid" && existsSync(join(env.root, "opt/tt/torchtitan")) && existsSync(join(env.root, "opt/stubs/sitecustomize.py"));
}

/** chroot and mount live in sbin, which a non-login PATH may lack. */
function sbin(cmd: string): string {
  for (const d of ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) if (existsSync(`${d}/${cmd}`)) return `${d}/${cmd}`;
  return cmd;
}

function cacheDir(): string {
  return process.env.CKPT_TORCH_CACHE ?? "/var/cache/ckpt-torch-roots";
}

/** True when CI asked for the interop suite to be mandatory (a missing root is then a failure, not a skip). */
export function torchRequired(): boolean {
  return process.env.CKPT_REQUIRE_TORCH === "1";
}

function ensureMounts(root: string): void {
  // Multi-process gloo needs /proc and /dev (shared memory) inside the root.
  for (const [what, args] of [["proc", ["-t", "proc", "proc"]], ["dev", ["--bind", "/dev"]]] as const) {
    const target = join(root, what);
    if (spawnSync(sbin("mountpoint"), ["-q", target]).status !== 0) {
      spawnSync(sbin("mount"), [...args, target], { stdio: "ignore" });
    }
  }
  const shm = join(root, "dev/shm");
  if (existsSync(shm) && spawnSync(sbin("mountpoint"), ["-q", shm]).status !== 0) {
    spawnSync(sbin("mount"), ["--bind", "/dev/shm", shm], { stdio: "ignore" });
  }
}

const envs = new Map<Suite, TorchEnv | null>();

/** The PyTorch root for `suite`, or null when it has not been built (tests then skip, unless required). */
export function torchEnv(suite: Suite): TorchEnv | null {
  if (envs.has(suite)) return envs.get(suite)!;
  const root = join(cacheDir(), suite);
  if (!existsSync(join(root, ".ckpt-ready"))) {
    if (torchRequired()) throw new Error(`PyTorch root ${root} missing: run test/interop/setup-torch-root.sh ${suite}`);
    envs.set(suite, null);
    return null;
  }
  ensureMounts(root);
  const env: TorchEnv = {
    suite,
    root,
    tmpdir() {
      const base = join(root, "tmp");
      mkdirSync(base, { recursive: true });
      const host = mkdtempSync(join(base, "ckpt-interop-"));
      const guest = host.slice(root.length);
      return { host, guest, cleanup: () => rmSync(host, { recursive: true, force: true }) };
    },
    python(script, args = [], opts = {}) {
      return runIn(["-c", script, ...args], opts);
    },
    pythonFile(guestPath, args = [], opts = {}) {
      return runIn([guestPath, ...args], opts);
    },
  };
  function runIn(pyArgs: string[], opts: PythonOptions): Promise<string> {
      return new Promise((resolve, reject) => {
        const child = spawn(sbin("chroot"), [root, "/usr/bin/python3", ...pyArgs], {
          env: { PATH: "/usr/bin:/bin", HOME: "/tmp", LANG: "C.UTF-8", OMP_NUM_THREADS: "1", PYTHONDONTWRITEBYTECODE: "1", USE_LIBUV: "0", ...opts.env },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        let err = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (err += d));
        const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 300_000);
        child.on("error", (e) => { clearTimeout(timer); reject(e); });
        child.on("close", (code) => {
          clearTimeout(timer);
          if (code === 0) resolve(out);
          else reject(new Error(`python (${suite}) exited ${code}:\n${err.slice(-4000)}\n${out.slice(-2000)}`));
        });
      });
  }
  envs.set(suite, env);
  return env;
}

/** Suites available for a test: both when built; in CI with CKPT_REQUIRE_TORCH=1 a missing one throws. */
export function availableSuites(only?: Suite[]): TorchEnv[] {
  return (only ?? SUITES).map((s) => torchEnv(s)).filter((e): e is TorchEnv => e !== null);
}
