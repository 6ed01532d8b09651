#!/usr/bin/env bash
# Creates (or reuses) a Debian root with PyTorch, used only as the judge of our output in interop tests.
# usage: setup-torch-root.sh trixie|sid   -> prints the root's path on stdout
# Roots are cached outside the repository: $CKPT_TORCH_CACHE (default /var/cache/ckpt-torch-roots).
set -euo pipefail
suite="${1:-trixie}"
cache="${CKPT_TORCH_CACHE:-/var/cache/ckpt-torch-roots}"
root="$cache/$suite"
stamp="$root/.ckpt-ready"
# What the judge needs; the stamp records it, so a root built for an older list gets the missing packages.
packages="python3-torch python3-safetensors python3-xxhash"
aptopts=()
[ "$suite" = sid ] && aptopts=(-o Acquire::Check-Valid-Until=false)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$packages" ]; then echo "$root"; exit 0; fi
mkdir -p "$cache"
log="$cache/$suite.log"
if [ -f "$stamp" ]; then
  {
    chroot "$root" apt-get "${aptopts[@]}" update
    chroot "$root" apt-get "${aptopts[@]}" install -y --no-install-recommends $packages
    echo "$packages" >"$stamp"
  } >>"$log" 2>&1 || { echo "setup-torch-root: adding packages to the $suite root failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
  echo "$root"
  exit 0
fi
{
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && apt-get install -y -qq debootstrap
  fi
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-numpy "$suite" "$root"
  chroot "$root" apt-get "${aptopts[@]}" update
  chroot "$root" apt-get "${aptopts[@]}" install -y --no-install-recommends $packages
  chroot "$root" python3 -c 'import torch, safetensors, xxhash; print("torch", torch.__version__)'
  echo "$packages" >"$stamp"
} >"$log" 2>&1 || { echo "setup-torch-root: building the $suite root failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
echo "$root"
