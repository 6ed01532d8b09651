// Builds the catalog of a source from headers only: safetensors headers (+ index cross-checks) or a DCP
// `.metadata` plus each blob's zip directory. No tensor data is read here.
import { CkptError } from "./errors.js";
import type { Catalog, CatalogTensor } from "./catalog-types.js";
import type { Source } from "./sources/types.js";
import { readSafetensorsHeaderFrom } from "./formats/safetensors/reader.js";
import { readIndex } from "./formats/safetensors/index-file.js";
import { openDcp } from "./formats/dcp/reader.js";
import { elementSize, numelOf } from "./dtypes.js";
import { readConfig } from "./sources/config.js";

export type { Catalog, CatalogTensor } from "./catalog-types.js";

const INDEX = "model.safetensors.index.json";

/** The safetensors files of a source: the index's shards, else every top-level `*.safetensors`. */
async function safetensorsFiles(source: Source, indexName: string | undefined): Promise<{ files: string[]; weightMap?: Map<string, string> }> {
  if (indexName) {
    const text = (await source.readText(indexName))!;
    const idx = await readIndex(text, `${source.id}/${indexName}`);
    const files = [...new Set(idx.weightMap.values())].sort();
    for (const f of files) if (!source.files().includes(f)) throw new CkptError("INDEX", `weight_map names ${f}, which is not in the checkpoint`, { file: `${source.id}/${indexName}` });
    return { files, weightMap: idx.weightMap };
  }
  return { files: source.files().filter((f) => f.endsWith(".safetensors") && !f.includes("/")).sort() };
}

export async function buildCatalog(source: Source): Promise<Catalog> {
  const names = source.files();
  const config = await readConfig(source, "config.json", `${source.id}/config.json`);
  if (names.includes(".metadata")) return dcpCatalog(source, config);
  const indexName = names.find((f) => f === INDEX) ?? names.find((f) => f.endsWith(".safetensors.index.json") && !f.includes("/"));
  const { files, weightMap } = await safetensorsFiles(source, indexName);
  if (files.length === 0) {
    throw new CkptError("NOT_FOUND", "no safetensors files and no DCP .metadata found", { file: source.id, hint: "point at a folder holding model*.safetensors or a DCP checkpoint" });
  }
  const tensors = new Map<string, CatalogTensor>();
  const fileMetadata = new Map<string, Record<string, string>>();
  for (const file of files) {
    const size = await source.size(file);
    const label = `${source.id}/${file}`;
    const h = await readSafetensorsHeaderFrom((o, l) => source.read(file, o, l), size, label);
    fileMetadata.set(file, h.metadata);
    for (const e of h.entries) {
      if (tensors.has(e.name)) throw new CkptError("INDEX", `tensor appears in two files: ${tensors.get(e.name)!.pieces[0]!.file} and ${file}`, { file: label, tensor: e.name });
      if (weightMap && weightMap.get(e.name) !== file) {
        throw new CkptError("INDEX", weightMap.has(e.name) ? `index says ${weightMap.get(e.name)}, but the tensor is in ${file}` : "tensor is in a shard but missing from weight_map", { file: `${source.id}/${indexName}`, tensor: e.name });
      }
      tensors.set(e.name, {
        name: e.name,
        dtype: e.dtype,
        shape: e.shape,
        pieces: [{ offsets: e.shape.map(() => 0), sizes: e.shape, file, byteOffset: h.dataStart + e.begin, byteLength: e.end - e.begin }],
      });
    }
  }
  if (weightMap) {
    for (const [name, file] of weightMap) if (!tensors.has(name)) throw new CkptError("INDEX", `weight_map lists the tensor in ${file}, but its header lacks it`, { file: `${source.id}/${indexName}`, tensor: name });
  }
  return { source, format: "safetensors", tensors, config, fileMetadata };
}

async function dcpCatalog(source: Source, config: Record<string, unknown> | undefined): Promise<Catalog> {
  const dir = source.localPath(".metadata");
  if (!dir) throw new CkptError("DCP", "DCP checkpoints must be on local disk", { file: source.id });
  const { metadata, chunks } = await openDcp(dir.slice(0, -"/.metadata".length));
  const tensors = new Map<string, CatalogTensor>();
  for (const [fqn, t] of metadata.tensors) tensors.set(fqn, { name: fqn, dtype: t.dtype, shape: t.size, pieces: [] });
  for (const c of chunks) {
    const t = tensors.get(c.fqn);
    if (!t) continue;
    if (numelOf(c.sizes) === 0) continue;
    if (!c.contiguous) throw new CkptError("DCP", `chunk at offsets [${c.offsets}] is stored non-contiguous (strides [${c.strides}]); not supported yet`, { file: `${source.id}/${c.file}`, tensor: c.fqn });
    t.pieces.push({ offsets: c.offsets, sizes: c.sizes, file: c.file, byteOffset: c.dataOffset, byteLength: numelOf(c.sizes) * elementSize(c.dtype) });
  }
  return { source, format: "dcp", tensors, config, fileMetadata: new Map() };
}
