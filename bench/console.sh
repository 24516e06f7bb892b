#!/usr/bin/env bash
# How the web console's pages answer with DEVICES devices stored (default 100,000):
# bulk-loads them under one product, signs in with an admin token, and times each page
# (curl's total time, median of RUNS requests) including a device page deep in the
# list (reached by following the "Next page" cursor PAGES times).
#
# usage: BIN=target/release/dynreg bench/console.sh [DEVICES] [RUNS] [PAGES]
set -eu
BIN=${BIN:-target/release/dynreg}; DEVICES=${1:-100000}; RUNS=${2:-20}; PAGES=${3:-200}
d=$(mktemp -d); trap 'kill $pid 2>/dev/null; rm -rf "$d"' EXIT
"$BIN" --data-dir "$d/data" --json product create --name Lamp --pid lamp --mode generate >/dev/null
"$BIN" --data-dir "$d/data" device bulk-load --pid lamp --count "$DEVICES" >/dev/null
token=$("$BIN" --data-dir "$d/data" --json token create --name bench --scope admin | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
RUST_LOG=warn "$BIN" --data-dir "$d/data" serve --listen 127.0.0.1:0 --http-listen "127.0.0.1:$port" 2>"$d/log" &
pid=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
base="http://127.0.0.1:$port"
get() { curl -s -o "$d/page" -w '%{time_total} %{http_code}\n' -b "dynreg_session=$token" "$base$1"; }
# The cursor PAGES pages into the list.
path="/devices?pid=lamp"
for _ in $(seq 1 "$PAGES"); do
  get "$path" >/dev/null
  next=$(grep -o 'href="/devices?[^"]*cursor=[^"]*" rel="next"' "$d/page" | sed 's/^href="//; s/" rel="next"$//; s/&amp;/\&/g') || true
  [ -n "$next" ] || break
  path=$next
done
deep=$path
unique=$(grep -o 'href="/devices/lamp/[^"]*"' "$d/page" | head -1 | sed 's|href="/devices/lamp/||; s/"$//')
echo "$("$BIN" --version 2>/dev/null || echo dynreg) with $DEVICES devices; median (max) of $RUNS requests, seconds"
for p in "/" "/products" "/products/lamp" "/devices" "/devices?pid=lamp" "$deep" "/devices?by=unique&q=$unique" "/devices/lamp/$unique" "/audit"; do
  times=$(for _ in $(seq 1 "$RUNS"); do get "$p"; done | awk '$2 != 200 { bad = 1 } { print $1 } END { if (bad) print "non-200" > "/dev/stderr" }' | sort -n)
  med=$(echo "$times" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  max=$(echo "$times" | tail -1)
  label=$p; [ "$p" = "$deep" ] && label="/devices?pid=lamp, page $PAGES (cursor)"
  printf '| `%s` | %s | %s |\n' "$label" "$med" "$max"
done
