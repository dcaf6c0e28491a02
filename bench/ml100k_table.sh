#!/usr/bin/env bash
# The acceptance table on MovieLens-100K (per-user random 80/20, d=64, L=3), for one seed (SEED, default 0):
# the seed fixes the split, the validation carve, the initialisation and the negative samples.
# All runs of a seed share one fp32 warm start (cached in $MODEL_DIR/.cache).
# Then: python bench/table.py runs/ml100k-seed0 [runs/ml100k-seed1 ...]  (mean and std over seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
MODEL_DIR=${MODEL_DIR:-runs/ml100k-seed$SEED}
common=(--dataset ml-100k --dim 64 --layers 3 --seed "$SEED" --model-dir "$MODEL_DIR" --no-publish --no-progress)
run() { echo "== gnaq train ${common[*]} $*"; .venv/bin/gnaq train "${common[@]}" "$@" 2>&1 | grep -E "^(test|size|artifact)"; }
run --method fp32 --version fp32
run --method ptq --bits 2 --ptq-granularity tensor --version ptq-tensor-2bit
for bits in 2 1 4; do run --method ptq --bits "$bits" --ptq-granularity node --version "ptq-node-${bits}bit"; done
for bits in 2 1 4; do run --method gnaq --bits "$bits" --version "gnaq-${bits}bit"; done
run --method gnaq --bits 2 --no-node-aware --version gnaq-2bit-no-node-aware
run --method gnaq --bits 2 --no-dynamic --version gnaq-2bit-no-dynamic
run --method gnaq --bits 2 --estimator ste --version gnaq-2bit-ste
