// Ordering of tensor and file names as people read them.

/** Numbers inside names compare numerically: layers.2 before layers.10. */
export function naturalCompare(a: string, b: string): number {
  const ra = a.split(/(\d+)/);
  const rb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
    if (ra[i] === rb[i]) continue;
    if (i % 2 === 1) return Number(ra[i]) - Number(rb[i]);
    return ra[i]! < rb[i]! ? -1 : 1;
  }
  return ra.length - rb.length;
}
