// The file the piscina pool loads in each worker thread. Piscina tries require() first, and on Node ≥ 20.19
// require() of an ES module is synchronous: a worker terminated while that require is instantiating the module
// graph (the pool destroyed right after a tiny job, or Ctrl-C during start-up) aborts the whole process inside V8
// ("IsGraphAsync must be used on an instantiated module"; reproduced here in 5 of 20 runs of 30 pool cycles).
// This CommonJS entry loads worker.js with import() instead, which a termination just cancels; it starts loading
// at once, so the first task does not wait for it.
import type { PieceResult, WorkerTask } from "./worker.js" with { "resolution-mode": "import" };

const loaded = import("./worker.js");
loaded.catch(() => {}); // a load error surfaces on the first task

const runTask = async (task: WorkerTask): Promise<PieceResult[]> => (await loaded).default(task);
export = runTask;
