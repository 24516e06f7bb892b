#!/usr/bin/env bash
# A/B of two builds of `dynreg serve` under the same load, in alternating rounds, so that
# the machine's drift hits both alike. For each run: a fresh data dir, a product in
# generate mode, the server on a free loopback port, `dynreg bench` (the B build's load
# generator for both), the server's CPU from /proc before and after.
#
# usage: A=/path/to/old/dynreg B=/path/to/new/dynreg bench/ab.sh ROUNDS N
#        A_ARGS / B_ARGS: extra `serve` flags for each (e.g. B_ARGS="--database-writers 4")
#        MQTT=5|3 QOS=1|0 (default 5, 1); concurrency 200.
# prints one line per run: build registrations/s p99_ms server_cpu_us/registration completed failed
set -u
ROUNDS=${1:-3}; N=${2:-10000}
: "${A:?set A to the first build}" "${B:?set B to the second build}"
A_ARGS=${A_ARGS:-}; B_ARGS=${B_ARGS:-}
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
for _ in $(seq 1 "$ROUNDS"); do
  for b in A B; do
    if [ "$b" = A ]; then BIN=$A; ARGS=$A_ARGS; else BIN=$B; ARGS=$B_ARGS; fi
    d=$(mktemp -d)
    secret=$("$BIN" --json --data-dir "$d/data" product create --name B --pid bench --mode generate \
      | python3 -c 'import json,sys;print(json.load(sys.stdin)["secret"])')
    p=$(port)
    # shellcheck disable=SC2086
    RUST_LOG=warn "$BIN" --data-dir "$d/data" serve --listen "127.0.0.1:$p" $ARGS 2>"$d/log" &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
    c0=$(cpu $pid)
    out=$(DYNREG_SECRET=$secret "$B" --json bench --port "$p" --pid bench -n "$N" -c 200 \
      --mqtt "${MQTT:-5}" --qos "${QOS:-1}")
    c1=$(cpu $pid)
    kill $pid; wait $pid 2>/dev/null
    echo "$out" | python3 -c "
import json, sys
r = json.load(sys.stdin)
cpu = ($c1 - $c0) / $TICK
print('$b', round(r['throughput_per_s']), r['latency_ms']['p99'], round(cpu * 1e6 / max(r['completed'], 1), 1), r['completed'], r['failed'])"
    rm -rf "$d"
    sleep 2
  done
done
