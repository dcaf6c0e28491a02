#!/usr/bin/env bash
# The model directory after N simulated nightly runs (issue 22): train a first model on the embedded
# MovieLens-100K (d = 64), then N x `gnaq retrain --force`, each with another fp32 learning rate. Like a night
# with new data, that changes the warm start's cache key, so each run writes a new .cache/fp32-*.pt. Prints the
# model directory's size, its versions and its warm starts after each run.
#   bash scripts/nightly-size.sh [N=10] [SOURCE_TREE=.]      # SOURCE_TREE: a checkout to measure (e.g. older)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
tree=$(cd "${2:-.}" && pwd)
python=$PWD/.venv/bin/python
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
quick=(--epochs 2 --qat-epochs 1 --eval-every 1 --patience 1 --no-progress)
gnaq() { (cd "$tree" && env -u REDIS_URL OMP_NUM_THREADS=1 "$python" -m cli "$@" >/dev/null); }
report() {
  printf '%-8s %6s KB  versions %d  warm starts %d\n' "$1" "$(du -sk "$dir" | cut -f1)" \
    "$(find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l)" "$(find "$dir/.cache" -name 'fp32-*.pt' | wc -l)"
}
gnaq train --model-dir "$dir" --dataset ml-100k "${quick[@]}"
report "trained"
for night in $(seq "$runs"); do
  gnaq retrain --model-dir "$dir" --force --tolerance 1 --keep 5 --lr "0.0$((10 + night))" "${quick[@]}"
  report "night $night"
done
