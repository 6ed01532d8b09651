// A diffusers pipeline repo (model_index.json at its root) keeps the denoiser in a component folder: FLUX.1's
// weights, config.json and diffusion_pytorch_model.safetensors.index.json live in `transformer/`. Pointed at the
// repo root, ckpt reads that folder as the checkpoint, so the root and `transformer/` give the same conversion.
import type { Source } from "./types.js";

/** The diffusers component folder that holds a pipeline's trainable transformer. */
export const DIFFUSERS_TRANSFORMER = "transformer";

/** `source` seen from inside its `transformer/` component when it is a diffusers pipeline root, else itself. */
export function diffusersTransformer(source: Source): Source {
  const files = source.files();
  const prefix = `${DIFFUSERS_TRANSFORMER}/`;
  if (!files.includes("model_index.json") || !files.includes(`${prefix}config.json`)) return source;
  if (!files.some((f) => f.startsWith(prefix) && f.endsWith(".safetensors"))) return source;
  return subfolder(source, prefix);
}

function subfolder(source: Source, prefix: string): Source {
  const inner = source.files().filter((f) => f.startsWith(prefix)).map((f) => f.slice(prefix.length));
  return {
    id: `${source.id.replace(/\/+$/, "")}/${prefix.slice(0, -1)}`,
    kind: source.kind,
    revision: source.revision,
    files: () => inner,
    localPath: (f) => source.localPath(prefix + f),
    size: (f) => source.size(prefix + f),
    read: (f, o, l) => source.read(prefix + f, o, l),
    readText: (f) => source.readText(prefix + f),
    close: () => source.close(),
  };
}
