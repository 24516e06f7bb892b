#!/usr/bin/env python3
"""Regenerate the dynreg-vs-Mosquitto comparison of docs/benchmarks.md on this machine.

Starts, on loopback only: `dynreg serve` (embedded, durable SQLite) and Mosquitto with
`dynreg bench responder` (the bare-transport floor: no auth, no storage). Runs
`dynreg bench` against each, side by side, for MQTT 3.1.1 and 5 at QoS 0 and 1, RUNS
times each, and prints a Markdown table: median (min-max) of throughput and p99
latency, and server CPU per registration (from /proc of the server processes).

Usage:  python3 bench/run.py            (N=10000 C=200 RUNS=3 by default)
        N=50000 RUNS=3 python3 bench/run.py
        DYNREG_BIN=/path/to/dynreg python3 bench/run.py   (measure that build instead)
        python3 bench/run.py --print-bin   (print the binary it would measure, and stop)
Also: the same load with the event outbox delivered to a webhook (bench/webhook_sink.py)
and /metrics scraped every second, against the outbox off; and `dynreg serve` on a
PostgreSQL store against the SQLite one (a fresh database `dynreg_bench_run` on the server
PG_ADMIN_URL names, default postgres://postgres@127.0.0.1:5432/postgres; PG=0 skips it),
with the CPU of every `postgres` process counted.
Needs: cargo, mosquitto (Debian: apt-get install mosquitto), curl, Linux /proc; psql and
a PostgreSQL server for the PostgreSQL row.
"""

import json
import os
import pwd
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("N", "10000"))
C = int(os.environ.get("C", "200"))
RUNS = int(os.environ.get("RUNS", "3"))


def target_dir():
    """Where cargo puts this workspace's builds, as cargo itself resolves it
    (CARGO_TARGET_DIR, relative to the workspace when relative, or a config file)."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["target_directory"]


# The binary this script builds, or DYNREG_BIN to measure another build.
BIN = os.environ.get("DYNREG_BIN") or os.path.join(target_dir(), "release", "dynreg")
TICK = os.sysconf("SC_CLK_TCK")
# 20,000 held connections, or as many as the open-file hard limit lets one process
# hold (each side needs a descriptor per connection plus a few of its own).
HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
HOLD = int(os.environ.get("HOLD", str(min(20000, HARD_NOFILE - 100))))
PRELOAD = int(os.environ.get("PRELOAD", "1000000"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def postgres_cpu_seconds():
    """The CPU time of every process named `postgres` (server, backends, WAL writer...)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += cpu_seconds(int(entry))
        except OSError:
            continue  # it ended meanwhile
    return total


PG_ADMIN = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
DROP_PG = ["psql", PG_ADMIN, "-qc", "DROP DATABASE IF EXISTS dynreg_bench_run WITH (FORCE)"]


def postgres_store(tmp):
    """A fresh database for the PostgreSQL row, or None (with the reason printed) when
    there is no PostgreSQL to use. It is dropped again when the script ends."""
    if os.environ.get("PG", "1") == "0":
        return None
    admin = PG_ADMIN
    if not shutil.which("psql"):
        print("PostgreSQL row skipped: psql is not installed", file=sys.stderr)
        return None
    made = subprocess.run([*DROP_PG, "-c", "CREATE DATABASE dynreg_bench_run"], capture_output=True, text=True)
    if made.returncode != 0:
        print(f"PostgreSQL row skipped: {made.stderr.strip()}", file=sys.stderr)
        return None
    base, _, query = admin.partition("?")
    url = base.rsplit("/", 1)[0] + "/dynreg_bench_run" + (f"?{query}" if query else "")
    key = os.path.join(tmp, "pg-master.key")
    return {"DYNREG_DATABASE_URL": url, "DYNREG_MASTER_KEY_FILE": key}


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def bench(port, pid, secret, mqtt, qos, prefix, extra=()):
    out = subprocess.run(
        [BIN, "--json", "bench", "--port", str(port), "--pid", pid, "-n", str(N), "-c", str(C),
         "--mqtt", mqtt, "--qos", qos, "--unique-prefix", prefix, *extra],
        env={**os.environ, "DYNREG_SECRET": secret}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def machine():
    """One line describing this machine: CPU model, cores, memory, kernel, Mosquitto."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    mosq = mosq[0] if mosq else "mosquitto (version unknown)"
    return (f"{os.cpu_count()} × {model}, {mem_kib / 1024 / 1024:.0f} GiB, Linux {os.uname().release}, "
            f"{mosq}")


def fmt(values, digits=0):
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def main():
    if sys.argv[1:] == ["--print-bin"]:
        print(BIN)
        return
    if not shutil.which("mosquitto"):
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    if not os.environ.get("DYNREG_BIN"):
        subprocess.run(["cargo", "build", "--release", "-p", "dynreg"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="dynreg-bench-")
    procs = []
    pg_env = None
    try:
        data = os.path.join(tmp, "data")
        created = subprocess.run([BIN, "--data-dir", data, "--json", "product", "create", "--name", "bench",
                                  "--mode", "generate"], capture_output=True, text=True, check=True)
        product = json.loads(created.stdout)
        dport, mport, dtls, mtls = free_port(), free_port(), free_port(), free_port()
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        # An end-entity certificate: rustls refuses a CA certificate as a server's.
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        # The server at its defaults: the simulated devices sign the current second, as
        # firmware does, so the devices of a second share a credential (recorded and
        # counted, never refused: PROTOCOL.md section 2).
        dynreg = subprocess.Popen([BIN, "--data-dir", data, "serve", "--listen", f"127.0.0.1:{dport}",
                                   "--tls-listen", f"127.0.0.1:{dtls}",
                                   "--tls-cert", cert, "--tls-key", key], stderr=subprocess.DEVNULL)
        procs.append(dynreg)
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            # Started as root, Mosquitto would switch to its own user and lose access to
            # the key in our private temp dir; `user` keeps the user it was started as.
            f.write(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                    f"allow_anonymous true\nlistener {mport} 127.0.0.1\n"
                    f"listener {mtls} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
        mosq = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(mosq)
        wait_port(dport)
        wait_port(mport)
        rows = []
        for mqtt in ("3", "5"):
            for qos in ("0", "1"):
                resp = subprocess.Popen([BIN, "bench", "responder", "--port", str(mport), "--qos", qos],
                                        stderr=subprocess.DEVNULL)
                procs.append(resp)
                time.sleep(0.5)
                results = {"dynreg": [], "mosquitto": []}
                for run in range(RUNS):
                    for target, port, servers in (("dynreg", dport, [dynreg.pid]), ("mosquitto", mport, [mosq.pid, resp.pid])):
                        before = [cpu_seconds(p) for p in servers]
                        r = bench(port, product["pid"], product["secret"], mqtt, qos, f"m{mqtt}q{qos}r{run}{target}-")
                        used = [cpu_seconds(p) - b for p, b in zip(servers, before)]
                        r["server_cpu_us"] = sum(used) * 1e6 / max(r["completed"], 1)
                        # The broker alone (for Mosquitto: without the responder).
                        r["broker_cpu_us"] = used[0] * 1e6 / max(r["completed"], 1)
                        results[target].append(r)
                resp.terminate()
                resp.wait()
                procs.remove(resp)
                for target in ("dynreg", "mosquitto"):
                    rs = results[target]
                    rows.append((f"MQTT {'3.1.1' if mqtt == '3' else '5'}, QoS {qos}", target,
                                 fmt([r["throughput_per_s"] for r in rs]),
                                 fmt([r["latency_ms"]["p99"] for r in rs], 1),
                                 fmt([r["server_cpu_us"] for r in rs], 1),
                                 fmt([r["broker_cpu_us"] for r in rs], 1) if target == "mosquitto" else "",
                                 fmt([r["bench_cpu_us_per_cycle"] for r in rs], 1),
                                 sum(sum(r["failed"].values()) for r in rs)))
        # TLS on both sides: MQTT 5, QoS 1.
        resp = subprocess.Popen([BIN, "bench", "responder", "--port", str(mport), "--qos", "1"], stderr=subprocess.DEVNULL)
        procs.append(resp)
        time.sleep(0.5)
        tls = {"dynreg": [], "mosquitto": []}
        for run in range(RUNS):
            for target, port in (("dynreg", dtls), ("mosquitto", mtls)):
                tls[target].append(bench(port, product["pid"], product["secret"], "5", "1", f"tls{run}{target}-",
                                         ("--tls-ca", cert))["throughput_per_s"])
        resp.terminate()
        resp.wait()
        procs.remove(resp)

        # Latency at a fixed offered rate: half the median dynreg throughput (MQTT 5, QoS 1).
        best = statistics.median(float(r[2].split(" ")[0].replace(",", "")) for r in rows
                                 if r[0] == "MQTT 5, QoS 1" and r[1] == "dynreg")
        rate = best / 2
        paced = []
        for run in range(RUNS):
            out = subprocess.run(
                [BIN, "--json", "bench", "--port", str(dport), "--pid", product["pid"], "-n", str(int(rate * 10)),
                 "-c", str(C), "--mqtt", "5", "--qos", "1", "--rate", str(rate), "--unique-prefix", f"paced{run}-"],
                env={**os.environ, "DYNREG_SECRET": product["secret"]}, capture_output=True, text=True, check=True)
            paced.append(json.loads(out.stdout))

        # Memory per held registration connection: RSS with HOLD connections held minus
        # RSS before, per connection.
        per_conn, held = [], 0
        for run in range(RUNS if HOLD else 0):
            idle = rss_kib(dynreg.pid)
            holder = subprocess.Popen(
                [BIN, "--json", "bench", "--port", str(dport), "--pid", product["pid"], "--hold", str(HOLD),
                 "--duration", "600", "--mqtt", "5", "--unique-prefix", f"held{run}-"],
                env={**os.environ, "DYNREG_SECRET": product["secret"]}, stdout=subprocess.PIPE, text=True)
            procs.append(holder)
            text = ""
            for line in holder.stdout:  # one pretty-printed JSON document
                text += line
                if line.startswith("}"):
                    break
            if not text:
                sys.exit("dynreg bench --hold failed (see its error above)")
            held = json.loads(text)["held"]
            time.sleep(1)
            loaded = rss_kib(dynreg.pid)
            holder.terminate()
            holder.wait()
            procs.remove(holder)
            per_conn.append((loaded - idle) * 1024 / max(held, 1))
            time.sleep(2)  # let the server close them all before the next round

        # The operations surface on: a second server with the event outbox delivered to a
        # webhook (bench/webhook_sink.py) and /metrics scraped every second, against the
        # first (outbox off), MQTT 5 QoS 1, alternating. The audit line of each
        # registration is written in both (it cannot be turned off).
        sink_port, ops_port, ops_http = free_port(), free_port(), free_port()
        sink = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "webhook_sink.py"), str(sink_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        ops_data = os.path.join(tmp, "ops-data")
        ops_product = json.loads(subprocess.run(
            [BIN, "--data-dir", ops_data, "--json", "product", "create", "--name", "bench", "--mode", "generate"],
            capture_output=True, text=True, check=True).stdout)
        ops_server = subprocess.Popen(
            [BIN, "--data-dir", ops_data, "serve", "--listen", f"127.0.0.1:{ops_port}",
             "--http-listen", f"127.0.0.1:{ops_http}", "--metrics-public", "true",
             "--webhook-url", f"http://127.0.0.1:{sink_port}/", "--webhook-secret", "bench"],
            stderr=subprocess.DEVNULL)
        procs.append(ops_server)
        wait_port(sink_port)
        wait_port(ops_port)
        scraping = subprocess.Popen(
            ["sh", "-c", f"while :; do curl -s -o /dev/null http://127.0.0.1:{ops_http}/metrics; sleep 1; done"])
        procs.append(scraping)
        features = {"off": [], "on": []}
        for run in range(RUNS):
            for name, port, prod in (("off", dport, product), ("on", ops_port, ops_product)):
                features[name].append(bench(port, prod["pid"], prod["secret"], "5", "1",
                                            f"ops{run}{name}-")["throughput_per_s"])

        # The PostgreSQL store against the SQLite one (the first server, which by now
        # holds the devices of every run above: if anything, that slows SQLite), MQTT 5
        # QoS 1, alternating; the server CPU counts dynreg and every postgres process.
        on_pg = {"sqlite": [], "postgres": [], "pg_cpu": [], "dynreg_cpu": []}
        pg_env = postgres_store(tmp)
        if pg_env:
            env = {**os.environ, **pg_env}
            subprocess.run([BIN, "init"], env=env, check=True, capture_output=True)
            pg_product = json.loads(subprocess.run(
                [BIN, "--json", "product", "create", "--name", "bench", "--mode", "generate"],
                env=env, capture_output=True, text=True, check=True).stdout)
            pg_port = free_port()
            pg_server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{pg_port}"],
                                         env=env, stderr=subprocess.DEVNULL)
            procs.append(pg_server)
            wait_port(pg_port)
            for run in range(RUNS):
                on_pg["sqlite"].append(bench(dport, product["pid"], product["secret"], "5", "1",
                                             f"pg{run}sqlite-")["throughput_per_s"])
                before = (postgres_cpu_seconds(), cpu_seconds(pg_server.pid))
                r = bench(pg_port, pg_product["pid"], pg_product["secret"], "5", "1", f"pg{run}postgres-")
                done = max(r["completed"], 1)
                on_pg["postgres"].append(r["throughput_per_s"])
                on_pg["pg_cpu"].append((postgres_cpu_seconds() - before[0]) * 1e6 / done)
                on_pg["dynreg_cpu"].append((cpu_seconds(pg_server.pid) - before[1]) * 1e6 / done)

        # The same MQTT 5 QoS 1 case with PRELOAD devices already stored.
        full = []
        if PRELOAD:
            subprocess.run([BIN, "--data-dir", data, "device", "bulk-load", "--pid", product["pid"],
                            "--count", str(PRELOAD)], check=True, capture_output=True)
            time.sleep(3)  # let the server's background checkpoint catch up with the load
            for run in range(RUNS):
                full.append(bench(dport, product["pid"], product["secret"], "5", "1", f"full{run}-")["throughput_per_s"])

        print(f"\nMachine: {machine()}")
        print(f"\n{N} registrations per run, concurrency {C}, {RUNS} runs; median (min-max)\n")
        print("| case | server | registrations/s | p99 latency (ms) | server CPU µs/registration | of which Mosquitto alone | bench CPU µs/cycle | failed |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(x) for x in row) + " |")
        lats = [p["latency_ms"] for p in paced]
        print(f"\nFixed offered rate {rate:,.0f}/s (half the MQTT 5 QoS 1 median), {paced[0]['total']:,} registrations "
              f"per run: p50 {fmt([l['p50'] for l in lats], 1)} ms, p90 {fmt([l['p90'] for l in lats], 1)}, "
              f"p99 {fmt([l['p99'] for l in lats], 1)}, p99.9 {fmt([l['p999'] for l in lats], 1)}, "
              f"max {fmt([l['max'] for l in lats], 1)}; failed {sum(sum(p['failed'].values()) for p in paced)}")
        print(f"\nTLS on both sides (MQTT 5, QoS 1): dynreg {fmt(tls['dynreg'])}/s, "
              f"Mosquitto floor {fmt(tls['mosquitto'])}/s, "
              f"{statistics.median(tls['dynreg']) / statistics.median(tls['mosquitto']):.2f}x")
        print(f"\nOutbox, webhook and /metrics scraping on (MQTT 5, QoS 1, alternating runs): "
              f"{fmt(features['on'])}/s against {fmt(features['off'])}/s with the outbox off, "
              f"{statistics.median(features['on']) / statistics.median(features['off']):.2f}x")
        if on_pg["postgres"]:
            print(f"\nPostgreSQL store (MQTT 5, QoS 1, alternating runs): {fmt(on_pg['postgres'])}/s against "
                  f"{fmt(on_pg['sqlite'])}/s on SQLite, "
                  f"{statistics.median(on_pg['postgres']) / statistics.median(on_pg['sqlite']):.2f}x; "
                  f"CPU per registration: dynreg {fmt(on_pg['dynreg_cpu'], 1)} µs, "
                  f"PostgreSQL {fmt(on_pg['pg_cpu'], 1)} µs")
        if full:
            empty = [float(r[2].split(" ")[0].replace(",", "")) for r in rows if r[0] == "MQTT 5, QoS 1" and r[1] == "dynreg"][0]
            print(f"\nWith {PRELOAD:,} more devices stored (bulk-loaded while serving), MQTT 5 QoS 1: "
                  f"{fmt(full)} registrations/s, {statistics.median(full) / empty:.2f}x the median above")
        if per_conn:
            capped = f" (capped by the open-file hard limit, {HARD_NOFILE:,})" if HOLD < 20000 else ""
            later = ", ".join(f"{b:,.0f}" for b in per_conn[1:])
            print(f"\nMemory: {held:,} held registration connections{capped}: dynreg serve RSS grows by "
                  f"{per_conn[0]:,.0f} bytes per connection over its idle RSS"
                  + (f" (rounds after it, the allocator reusing the first round's memory: {later})" if later else ""))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        if pg_env:
            subprocess.run(DROP_PG, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
