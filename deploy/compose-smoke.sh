#!/usr/bin/env bash
# The compose smoke test: build both images and run the stack on a real Docker engine, as a new user would.
#
#   bash deploy/compose-smoke.sh      # from the repository root; needs `docker` and `docker compose`
#
# Steps (each timed, each with a timeout; a failure names the service and prints its last log lines):
#   1. docker build of the api and trainer images (torch from GNAQ_TORCH_PIP_ARGS, else the local wheel server
#      on 127.0.0.1:8765 when one answers, else the PyTorch CPU index);
#   2. docker compose up -d --wait on a fresh project name and fresh volumes (init trains a small first model);
#   3. GET /recommend/{user}?k=10 for a user of the first model;
#   4. POST /interactions with the key from the project's .env;
#   5. the next GET reflects that post (the posted item is no longer recommended);
#   6. docker compose exec trainer gnaq retrain --force; the API hot-reloads the new version;
#   7. docker compose restart redis: every acknowledged interaction is still in the log;
#   8. docker compose down, then up again: starts at once from the volumes (init trains nothing);
#   9. docker compose down -v, whatever happened (trap).
# Environment: GNAQ_SMOKE_TRAIN_ARGS (extra `gnaq train` flags of the first model; small by default),
# GNAQ_SMOKE_KEEP=1 keeps the stack up for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

project="gnaq-smoke-$$"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="smoke-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
api_image="gnaq-rec-api:latest"  # the names docker-compose.yml and deploy/k8s use
trainer_image="gnaq-rec-trainer:latest"
user=196  # the first user of MovieLens-100K
base="http://127.0.0.1:${port}"
started=$SECONDS

# The project's .env, as a user writes it from .env.example: own key, own port, a quick first model.
sed -e "s|^GNAQ_API_KEYS=.*|GNAQ_API_KEYS=${key}|" -e "s|^GNAQ_PORT=.*|GNAQ_PORT=${port}|" \
    -e "s|^GNAQ_RELOAD_POLL_SECONDS=.*|GNAQ_RELOAD_POLL_SECONDS=1|" \
    -e "s|^GNAQ_TRAIN_ARGS=.*|GNAQ_TRAIN_ARGS=${GNAQ_SMOKE_TRAIN_ARGS:---dim 16 --epochs 1 --qat-epochs 1 --eval-every 1}|" \
    .env.example >"$work/.env"
compose=(docker compose --project-name "$project" --project-directory . -f docker-compose.yml --env-file "$work/.env")

say() { printf 'smoke [%4d s] %s\n' "$((SECONDS - started))" "$*"; }
fail() {  # fail SERVICE MESSAGE: the message, then the service's last log lines, then exit 1
  say "FAILED ($1): $2"
  "${compose[@]}" ps -a 2>&1 | sed 's/^/  ps | /' || true
  "${compose[@]}" logs --no-color --tail 40 "$1" 2>&1 | sed "s/^/  $1 | /" || true
  exit 1
}
cleanup() {
  local code=$?
  if [[ ${GNAQ_SMOKE_KEEP:-0} == 1 ]]; then
    say "kept: ${compose[*]} ..."
  else
    timeout 120 "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    say "step 9: docker compose down -v (project $project removed)"
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT

step() {  # step NAME SECONDS SERVICE COMMAND...: run with a timeout, time it, fail naming SERVICE
  local name=$1 limit=$2 service=$3 began=$SECONDS
  shift 3
  if ! timeout "$limit" "$@" >"$work/step.log" 2>&1; then
    sed 's/^/  | /' "$work/step.log" | tail -20
    fail "$service" "$name (limit ${limit} s)"
  fi
  say "$name: ok in $((SECONDS - began)) s"
}
http() {  # http METHOD PATH [BODY]: prints the body; fails on a non-2xx status
  curl -fsS --max-time 10 -X "$1" -H "X-API-Key: ${key}" -H "Content-Type: application/json" \
       ${3:+--data "$3"} "${base}$2"
}
recommended() { http GET "/recommend/${user}?k=10" | jq -r '.items[].item_id'; }
served_version() { http GET /readyz | jq -r .model_version; }
wait_for() {  # wait_for SECONDS SERVICE MESSAGE COMMAND...: poll COMMAND until it succeeds
  local limit=$1 service=$2 message=$3 deadline=$((SECONDS + $1))
  shift 3
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$service" "$message (waited ${limit} s)"
    sleep 1
  done
}

# 1. The images.
torch_args=${GNAQ_TORCH_PIP_ARGS:-}
if [[ -z $torch_args ]] && curl -fsS --max-time 2 http://127.0.0.1:8765/ >/dev/null 2>&1; then
  torch_args="--find-links http://127.0.0.1:8765/"
fi
torch_args=${torch_args:---index-url https://download.pytorch.org/whl/cpu}
say "step 1: torch from: $torch_args"
for target in api trainer; do
  image=$([[ $target == api ]] && echo "$api_image" || echo "$trainer_image")
  step "step 1: docker build --target $target" 1200 "$target" \
    docker build --network host --target "$target" --build-arg TORCH_PIP_ARGS="$torch_args" -t "$image" .
  say "  $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done

# 2. The stack, from nothing.
step "step 2: docker compose up -d --wait (init trains the first model)" 900 init \
  "${compose[@]}" up -d --wait --wait-timeout 880 --pull never
"${compose[@]}" ps --format '{{.Service}}: {{.State}} {{.Health}}' | sed 's/^/  /'
first=$(served_version) || fail api "GET /readyz"
say "  serving $first"

# 3. A user of the first model.
before=$(recommended) || fail api "GET /recommend/${user}?k=10"
[[ $(wc -l <<<"$before") -eq 10 ]] || fail api "GET /recommend/${user}?k=10 returned $(wc -l <<<"$before") items"
top=$(head -1 <<<"$before")
say "step 3: GET /recommend/${user}?k=10: ok (top item $top)"

# 4. A write with the key from .env.
http POST /interactions "[{\"user_id\": \"${user}\", \"item_id\": \"${top}\"}]" >/dev/null \
  || fail api "POST /interactions with the key from .env"
say "step 4: POST /interactions (${user} -> ${top}): ok"

# 5. The next read reflects it: a known item is never recommended.
after=$(recommended) || fail api "GET /recommend/${user}?k=10 after the post"
! grep -qx "$top" <<<"$after" || fail api "item $top, just posted, is still recommended to ${user}"
say "step 5: the next GET no longer recommends ${top}: ok"

# 6. A retrain in the trainer container, hot-reloaded by the API.
step "step 6: docker compose exec trainer gnaq retrain --force --tolerance 1" 900 trainer \
  "${compose[@]}" exec -T trainer gnaq retrain --force --tolerance 1
new_version() { [[ $(served_version) != "$first" ]]; }
wait_for 60 api "the API did not hot-reload the retrained version" new_version
second=$(served_version)
say "  the API serves $second"

# 7. A Redis restart loses no acknowledged interaction.
for item in 50 100 181; do
  http POST /interactions "[{\"user_id\": \"${user}\", \"item_id\": \"${item}\"}]" >/dev/null \
    || fail api "POST /interactions before the Redis restart"
done
stream_length() { "${compose[@]}" exec -T redis redis-cli XLEN gnaq:interactions; }
logged=$(stream_length) || fail redis "XLEN before the restart"
step "step 7: docker compose restart redis" 120 redis "${compose[@]}" restart redis
wait_for 60 redis "redis did not come back" stream_length
kept=$(stream_length)
[[ $kept -eq $logged ]] || fail redis "the interaction log held $logged entries before the restart and $kept after"
wait_for 60 api "the API did not accept writes again after the Redis restart" \
  http POST /interactions "[{\"user_id\": \"${user}\", \"item_id\": \"1\"}]"
say "  all $logged logged interactions kept; writes accepted again"

# 8. down, then up: the volumes hold the model, nothing is retrained.
step "step 8: docker compose down" 120 api "${compose[@]}" down
step "step 8: docker compose up -d --wait (from the volumes)" 180 api \
  "${compose[@]}" up -d --wait --wait-timeout 170 --pull never
"${compose[@]}" logs --no-color init | grep -q "exists, nothing to train" || fail init "init trained again"
[[ $(served_version) == "$second" ]] || fail api "after down/up the API serves $(served_version), not $second"
say "  init trained nothing; the API serves $second"
api_stop() { "${compose[@]}" stop api >/dev/null && docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -aq api)"; }
code=$(api_stop) || fail api "docker compose stop api"
[[ $code == 0 ]] || fail api "the API exited with $code on docker compose stop (expected 0)"
say "  docker compose stop api: exit code 0"
say "passed"
