#!/usr/bin/env bash
# Runs the dynreg beside this script's checkout (target/release/dynreg, or $DYNREG) on a
# PostgreSQL store: a fresh database `dynreg_bench` each time a product is created, so
# that bench/ab.sh can compare `dynreg serve` on SQLite (A) with PostgreSQL (B):
#
#   A=target/release/dynreg B=bench/on-postgres.sh bench/ab.sh 3 10000
#
# PG_ADMIN_URL names the server (default the local one, user postgres). Note that ab.sh
# counts the CPU of the dynreg process only, not of the PostgreSQL backends.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${DYNREG:-$here/target/release/dynreg}
admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
base=${admin%%\?*}
base=${base%/*}
export DYNREG_DATABASE_URL="$base/dynreg_bench?sslmode=disable"
export DYNREG_MASTER_KEY=${DYNREG_MASTER_KEY:-0000000000000000000000000000000000000000000000000000000000000001}
case " $* " in
*" product create "*)
    psql "$admin" -qc "DROP DATABASE IF EXISTS dynreg_bench WITH (FORCE)" -c "CREATE DATABASE dynreg_bench" >/dev/null
    ;;
esac
exec "$bin" "$@"
