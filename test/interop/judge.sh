#!/usr/bin/env bash
# Judge one conversion with the real models: TorchTitan's model loaded from <ckpt> (ckpt convert / shard output,
# DCP) against HF transformers on <hf-folder>, in the sid root built by setup-torch-root.sh sid.
# usage: test/interop/judge.sh <hf-folder> <ckpt-folder> [--seq 24] [--batch 2]
# Prints max |Δlogit|, logit scale, KL and both losses per pass (as stored, RMSNorm ×16); exit 0 = equivalent.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,6p "$0" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
root="$(bash "$here/setup-torch-root.sh" sid)"
work="$(mktemp -d "$root/tmp/judge-XXXXXX")"
trap 'umount "$work/hf" "$work/ckpt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/hf" "$work/ckpt"
mount --bind "$(realpath "$1")" "$work/hf"
mount --bind "$(realpath "$2")" "$work/ckpt"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
cp "$here/py/judge.py" "$work/judge.py"
g="${work#"$root"}"
shift 2
chroot "$root" env PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 PYTHONPATH=/opt/stubs:/opt/spmd:/opt/tt TORCHDYNAMO_DISABLE=1 PYTHONWARNINGS=ignore \
  python3 "$g/judge.py" --hf "$g/hf" --ckpt "$g/ckpt" "$@" 2> >(grep -v -e "^\[" -e "Loading weights" -e "LOAD REPORT" -e "UNEXPECTED" -e "^Key " -e "^---" -e "^Notes" -e "can be ignored" -e "^$" >&2)
