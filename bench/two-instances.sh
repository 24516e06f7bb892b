#!/usr/bin/env bash
# One against two `dynreg serve` instances on one PostgreSQL database, under the same
# total load (20,000 registrations over 200 connections per round), three rounds.
# Uses bench/on-postgres.sh (a fresh database dynreg_bench; PG_ADMIN_URL) and the release
# build in target/release. Prints one line per round.
set -u
cd "$(dirname "$0")/.."
B=bench/on-postgres.sh
secret=$($B --json product create --name B --pid bench --mode generate | python3 -c 'import json,sys;print(json.load(sys.stdin)["secret"])')
export DYNREG_SECRET=$secret
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
p1=$(port); p2=$(port)
export DYNREG_DATABASE_URL="postgres://postgres@127.0.0.1:5432/dynreg_bench?sslmode=disable"
export DYNREG_MASTER_KEY=0000000000000000000000000000000000000000000000000000000000000001
RUST_LOG=warn target/release/dynreg serve --listen 127.0.0.1:$p1 --connections-per-ip 0 2>/dev/null & s1=$!
RUST_LOG=warn target/release/dynreg serve --listen 127.0.0.1:$p2 --connections-per-ip 0 2>/dev/null & s2=$!
sleep 2
for round in 1 2 3; do
  one=$(target/release/dynreg --json bench --port $p1 --pid bench -n 20000 -c 200 --unique-prefix "one$round-" | python3 -c 'import json,sys;print(round(json.load(sys.stdin)["throughput_per_s"]))')
  start=$(date +%s.%N)
  target/release/dynreg --json bench --port $p1 --pid bench -n 10000 -c 100 --unique-prefix "a$round-" > /tmp/a.json & b1=$!
  target/release/dynreg --json bench --port $p2 --pid bench -n 10000 -c 100 --unique-prefix "b$round-" > /tmp/b.json & b2=$!
  wait $b1 $b2; end=$(date +%s.%N)
  two=$(python3 -c "print(round(20000/($end-$start)))")
  echo "round $round: one instance $one reg/s; two instances together $two reg/s (20,000 regs, 200 connections in all)"
done
kill $s1 $s2
