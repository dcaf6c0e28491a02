#!/usr/bin/env bash
# The main job on the embedded default: GNAQ 2-bit on MovieLens-100K, exported to ./models and published.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/gnaq train --dataset ml-100k --method gnaq --bits 2 --dim 64 --layers 3 --seed 0 "$@"
