#!/usr/bin/env bash
# How long `dynreg device expect` takes to list N devices (default 1,000,000: the
# issue's target is under a minute on the SQLite store), each with a barcode and a MAC,
# into a fresh data dir; and the product's counts afterwards.
#
#   cargo build --release && bench/expected.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
bin=${BIN:-target/release/dynreg}
dir=$(mktemp -d /tmp/dynreg-expected.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$bin" --data-dir "$dir/data" product create --name bench --pid exp --mode generate --admission listed >/dev/null
python3 - "$n" >"$dir/devices.csv" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write("unique,barcode,mac\n")
for i in range(n):
    out.write(f"dev-{i:08d},BC{i:010d},02:{(i >> 32) & 255:02X}:{(i >> 24) & 255:02X}:{(i >> 16) & 255:02X}:{(i >> 8) & 255:02X}:{i & 255:02X}\n")
PY
echo "CSV: $(wc -l <"$dir/devices.csv") lines, $(du -h "$dir/devices.csv" | cut -f1)"
start=$(date +%s.%N)
"$bin" --data-dir "$dir/data" device expect --pid exp "$dir/devices.csv"
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'listed {n} devices in {s:.1f} s ({n/s:,.0f}/s)')" "$start" "$end" "$n"
"$bin" --data-dir "$dir/data" device expected --pid exp --count
echo "store: $(du -sh "$dir/data" | cut -f1)"
