#!/usr/bin/env bash
# Creates (or reuses) a Debian root with PyTorch, used only as the judge of our output in interop tests.
# usage: setup-torch-root.sh trixie|sid   -> prints the root's path on stdout
# Roots are cached outside the repository: $CKPT_TORCH_CACHE (default /var/cache/ckpt-torch-roots).
# The sid root is also the model judge: transformers 5.12 + TorchTitan main (b5bcd76) + spmd_types + PEFT (5d602fd)
# + diffusers (58eb52c), unpacked from test/interop/judges/ into /opt/tt, /opt/spmd, /opt/peft, /opt/diffusers, with
# the stubs' sitecustomize.py in /opt/stubs (PYTHONPATH order).
set -euo pipefail
suite="${1:-trixie}"
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CKPT_TORCH_CACHE:-/var/cache/ckpt-torch-roots}"
root="$cache/$suite"
stamp="$root/.ckpt-ready"
# What the judge needs; the stamp records it, so a root built for an older list gets the missing packages.
packages="python3-torch python3-safetensors python3-xxhash"
kit=""
if [ "$suite" = sid ]; then
  # PEFT needs accelerate, yaml, psutil, tqdm; huggingface_hub (PEFT, diffusers) needs the real fsspec.
  # einops: TorchTitan's flux model (layers.py rearrange).
  packages="$packages python3-transformers python3-compressed-tensors python3-accelerate python3-yaml python3-psutil python3-tqdm python3-fsspec python3-einops"
  kit="$(cat "$here"/judges/*.tar.gz "$here"/judges/*.py | sha256sum | cut -c1-16)"
fi
want="$packages${kit:+ kit=$kit}"
aptopts=()
[ "$suite" = sid ] && aptopts=(-o Acquire::Check-Valid-Until=false)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "$root"; exit 0; fi
mkdir -p "$cache"
log="$cache/$suite.log"

install_kit() {
  [ -n "$kit" ] || return 0
  rm -rf "$root/opt/tt" "$root/opt/spmd" "$root/opt/stubs" "$root/opt/peft" "$root/opt/diffusers"
  mkdir -p "$root/opt/tt" "$root/opt/spmd" "$root/opt/stubs" "$root/opt/peft" "$root/opt/diffusers"
  tar xzf "$here"/judges/torchtitan-*.tar.gz -C "$root/opt/tt" --strip-components=1
  tar xzf "$here"/judges/spmd_types-*.tar.gz -C "$root/opt/spmd"   # no top folder in this tarball
  tar xzf "$here"/judges/peft-*.tar.gz -C "$root/opt/peft"
  tar xzf "$here"/judges/diffusers-*.tar.gz -C "$root/opt/diffusers"
  cp "$here"/judges/torchtitan_stubs_sitecustomize.py "$root/opt/stubs/sitecustomize.py"
  chroot "$root" env PYTHONPATH=/opt/stubs:/opt/spmd:/opt/tt:/opt/peft:/opt/diffusers TORCHDYNAMO_DISABLE=1 python3 -c \
    'import transformers, torchtitan.models.llama3, torchtitan.models.flux, torchtitan.models.muse_glimmer, spmd_types, peft, diffusers; print("transformers", transformers.__version__, "peft", peft.__version__, "diffusers", diffusers.__version__)'
}

# Each step runs in a plain subshell with its own errexit: `{ …; } || handler` would switch errexit off for the
# whole block (bash ignores -e inside an AND-OR list), and a failed build would still be stamped ready.
run_logged() {  # run_logged <what> <function>
  set +e
  ( set -e; "$2" ) >>"$log" 2>&1
  local rc=$?
  set -e
  if [ $rc -ne 0 ]; then echo "setup-torch-root: $1 the $suite root failed (exit $rc); see $log" >&2; tail -20 "$log" >&2; exit 1; fi
}

add_packages() {
  chroot "$root" apt-get "${aptopts[@]}" update
  chroot "$root" apt-get "${aptopts[@]}" install -y --no-install-recommends $packages
  install_kit
  echo "$want" >"$stamp"
}

build_root() {
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && apt-get install -y -qq debootstrap
  fi
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-numpy "$suite" "$root"
  chroot "$root" apt-get "${aptopts[@]}" update
  chroot "$root" apt-get "${aptopts[@]}" install -y --no-install-recommends $packages
  chroot "$root" python3 -c 'import torch, safetensors, xxhash; print("torch", torch.__version__)'
  install_kit
  echo "$want" >"$stamp"
}

if [ -f "$stamp" ]; then
  run_logged "adding packages to" add_packages
else
  : >"$log"
  run_logged "building" build_root
fi
echo "$root"
