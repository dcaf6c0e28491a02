#!/usr/bin/env bash
# The benchmark table (fp32, PTQ, GNAQ at 1/2/4 bits, GNAQ ablations, LSQ / N2UQ / BiGeaR baselines) for one dataset (DATASET, default
# ml-100k: per-user random 80/20) and one seed (SEED, default 0), d=64, L=3. The seed fixes the split (where
# the dataset has no official one), the validation carve, the initialisation and the negative samples.
# All runs of a seed share one fp32 warm start (cached in $MODEL_DIR/.cache).
# Then: python bench/table.py runs/ml-100k-seed0 [runs/ml-100k-seed1 ...]  (mean and std over seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
DATASET=${DATASET:-ml-100k}
MODEL_DIR=${MODEL_DIR:-runs/$DATASET-seed$SEED}
common=(--dataset "$DATASET" --dim 64 --layers 3 --seed "$SEED" --model-dir "$MODEL_DIR" --no-publish --no-progress)
# run VERSION FLAGS...: one training run; a version that already exists is kept (reruns resume).
run() {
  local version=$1; shift
  if [[ -d "$MODEL_DIR/$version" ]]; then echo "== $version exists, kept"; return; fi
  echo "== gnaq train ${common[*]} --version $version $*"
  .venv/bin/gnaq train "${common[@]}" --version "$version" "$@" 2>&1 | grep -E "^(test|size|artifact|gnaq: error)"
}
run fp32 --method fp32
run ptq-tensor-2bit --method ptq --bits 2 --ptq-granularity tensor
for bits in 2 1 4; do run "ptq-node-${bits}bit" --method ptq --bits "$bits" --ptq-granularity node; done
for bits in 2 1 4; do run "gnaq-${bits}bit" --method gnaq --bits "$bits"; done
run gnaq-2bit-no-node-aware --method gnaq --bits 2 --no-node-aware
run gnaq-2bit-no-dynamic --method gnaq --bits 2 --no-dynamic
run gnaq-2bit-ste --method gnaq --bits 2 --estimator ste
for bits in 2 1 4; do
  run "lsq-${bits}bit" --method lsq --bits "$bits"
  run "n2uq-${bits}bit" --method n2uq --bits "$bits"
done
run bigear-1bit --method bigear --bits 1
