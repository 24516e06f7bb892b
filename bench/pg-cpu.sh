#!/usr/bin/env bash
# End to end on PostgreSQL with the CPU of every process counted: `dynreg serve` on a
# fresh database (bench/on-postgres.sh), `dynreg bench -n N -c 200` (MQTT 5, QoS 1),
# and the CPU of all `postgres` processes and of dynreg from /proc before and after.
# DYNREG_DATABASE_WRITERS sets the writers (default: dynreg's).
#
# usage: bench/pg-cpu.sh [N]     (release build in target/release; PG_ADMIN_URL)
set -eu
N=${1:-20000}
cd "$(dirname "$0")/.."
pgcpu() { local t=0 s; for p in $(pgrep -x postgres); do s=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + s)); done; echo "$t"; }
B=bench/on-postgres.sh
secret=$($B --json product create --name B --pid bench --mode generate | python3 -c 'import json,sys;print(json.load(sys.stdin)["secret"])')
p=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
# Through on-postgres.sh, which names the database (PG_ADMIN_URL) and the key; it execs
# dynreg, so $! is the server.
RUST_LOG=warn $B serve --listen "127.0.0.1:$p" 2>/dev/null &
s=$!
trap 'kill $s 2>/dev/null' EXIT
sleep 2
c0=$(pgcpu); d0=$(awk '{print $14+$15}' "/proc/$s/stat")
rate=$(DYNREG_SECRET=$secret target/release/dynreg --json bench --port "$p" --pid bench -n "$N" -c 200 | python3 -c 'import json,sys;print(round(json.load(sys.stdin)["throughput_per_s"]))')
c1=$(pgcpu); d1=$(awk '{print $14+$15}' "/proc/$s/stat")
T=$(getconf CLK_TCK)
python3 -c "print('writers ${DYNREG_DATABASE_WRITERS:-default}: $rate reg/s; PostgreSQL CPU', round(($c1-$c0)/$T*1e6/$N, 1), 'µs/reg; dynreg CPU', round(($d1-$d0)/$T*1e6/$N, 1), 'µs/reg')"
