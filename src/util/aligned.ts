// Typed-array views (Float32Array, Uint16Array, …) need their byteOffset to be a multiple of the element size; bytes
// read from a source may start anywhere in a shared buffer.

/** `b` itself when its byteOffset is a multiple of 8, else a copy that is (every typed-array view fits then). */
export function aligned(b: Uint8Array): Uint8Array {
  if (b.byteOffset % 8 === 0) return b;
  const c = new Uint8Array(new ArrayBuffer(b.byteLength));
  c.set(b);
  return c;
}
