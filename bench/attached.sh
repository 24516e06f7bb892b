#!/usr/bin/env bash
# dynreg attached to a fresh 2-node RabbitMQ 3.10 cluster, against that cluster's own
# floor, in one run:
#   floor:  the broker + dynreg's hooks (a hooks-only instance) + a canned responder over
#           AMQP (`dynreg bench responder --attach`): no registration, no storage;
#   dynreg: the broker + `dynreg serve --listen off --http-listen … --attach amqp://…`
#           (hooks and worker in one instance, SQLite store).
# The devices are `dynreg bench` (the full cycle, a new MQTT 3.1.1 connection each) on
# node 1's MQTT port. Prints one JSON line per run and the ratio.
#
#   bench/attached.sh [N=1000] [CONCURRENCY=20] [ROUNDS=2]
#
# Needs a release build (cargo build --release -p dynreg) and RabbitMQ installed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
c=${2:-20}
rounds=${3:-2}
bin=target/release/dynreg
[ -x "$bin" ] || { echo "build first: cargo build --release -p dynreg" >&2; exit 1; }

work=$(mktemp -d /tmp/dynreg-attached.XXXXXX)
rmq="$work/rabbitmq"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    support/rabbitmq-cluster.sh stop "$rmq" || true
    rm -rf "$work"
}
trap cleanup EXIT

hook_port=18090
while (exec 3<>"/dev/tcp/127.0.0.1/$hook_port") 2>/dev/null; do hook_port=$((hook_port + 1)); done
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
vars=$(support/rabbitmq-cluster.sh start "$rmq" "http://dynreg:$token@127.0.0.1:$hook_port/hooks/rabbitmq" 2>/dev/null)
while IFS= read -r line; do export "${line?}"; done <<<"$vars"
mqtt1=${DYNREG_TEST_RABBITMQ_MQTT%%,*}
amqp1=$DYNREG_TEST_AMQP_URL

data="$work/data"
"$bin" --data-dir "$data" init >/dev/null
product=$("$bin" --data-dir "$data" --json product create --name bench --mode generate)
pid=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pid"])' "$product")
secret=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secret"])' "$product")

wait_log() { # file, needle
    for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

serve() { # log, extra args...
    local log=$1
    shift
    RUST_LOG=warn,dynreg=info,dynreg_attach=info "$bin" --data-dir "$data" serve --listen off \
        --http-listen "127.0.0.1:$hook_port" --hook-token "$token" \
        --attach-queue-type classic "$@" >"$log" 2>&1 &
    pids+=($!)
    wait_log "$log" "dynreg serving"
}

load() { # label
    local out
    out=$(DYNREG_SECRET=$secret "$bin" bench --host 127.0.0.1 --port "$mqtt1" --mqtt 3 \
        --pid "$pid" -n "$n" -c "$c" --timeout 30 --unique-prefix "$1-$RANDOM-" --json)
    python3 - "$1" "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(json.dumps({"run": sys.argv[1], "completed": r.get("completed"), "failed": r.get("failed"),
                  "rate": round(r["throughput_per_s"], 1),
                  "p50_ms": r.get("latency_ms", {}).get("p50"), "p99_ms": r.get("latency_ms", {}).get("p99")}))
PY
}

stop_last() {
    local p=${pids[-1]}
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset 'pids[-1]'
}

results=()
for round in $(seq 1 "$rounds"); do
    # The floor: hooks only (no worker) + the canned responder on the queue.
    serve "$work/hooks.log"
    "$bin" bench responder --attach "$amqp1" --attach-queue-type classic >"$work/responder.log" 2>&1 &
    pids+=($!)
    wait_log "$work/responder.log" "responder taking requests"
    sleep 1
    results+=("$(load "floor$round")")
    echo "${results[-1]}"
    stop_last
    stop_last
    # dynreg attached: hooks and worker in one instance.
    serve "$work/dynreg.log" --attach "$amqp1"
    wait_log "$work/dynreg.log" "AMQP worker consuming"
    results+=("$(load "dynreg$round")")
    echo "${results[-1]}"
    stop_last
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
floor = [r["rate"] for r in runs if r["run"].startswith("floor")]
dyn = [r["rate"] for r in runs if r["run"].startswith("dynreg")]
if floor and dyn:
    f, d = max(floor), max(dyn)
    print(json.dumps({"floor_best": f, "dynreg_best": d, "ratio": round(d / f, 2)}))
'
