// How much a --no-fsync run may leave dirty in the page cache before the kernel starts throttling its writers.
//
// Linux lets dirty pages accumulate freely up to the midpoint of vm.dirty_background_* and vm.dirty_* (the
// "freerun" ceiling); above it writers are slowed down to the disk's pace and, with several threads writing one
// file, burn kernel time on top (measured here: a 6 GB f32 conversion took 7 s through the page cache against
// 4.7 s with O_DIRECT). So page-cache writes pay off only for outputs below that ceiling, and O_DIRECT is used
// for larger ones even when nothing is fsynced.
import { readFileSync } from "node:fs";

function readNumber(path: string): number | undefined {
  try {
    const n = Number(readFileSync(path, "utf8").trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function memAvailableBytes(): number | undefined {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync("/proc/meminfo", "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Bytes that can be written into the page cache without throttling now; 0 when unknown (not Linux). */
export function unthrottledDirtyBytes(): number {
  const avail = memAvailableBytes();
  if (avail === undefined) return 0;
  const limit = (bytesKey: string, ratioKey: string, fallbackRatio: number): number => {
    const bytes = readNumber(`/proc/sys/vm/${bytesKey}`);
    if (bytes) return bytes;
    return (avail * (readNumber(`/proc/sys/vm/${ratioKey}`) ?? fallbackRatio)) / 100;
  };
  const background = limit("dirty_background_bytes", "dirty_background_ratio", 10);
  const hard = limit("dirty_bytes", "dirty_ratio", 20);
  return Math.floor((background + hard) / 2);
}
