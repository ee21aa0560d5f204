"""PostgreSQL benchmark: seedvault's logical backup and restore against same-run pg_dump/pg_restore anchors.

Why: issue 4 asks whether streaming pg_dump through seedvault (zstd -> AES-256-GCM chunks -> SHA-256 ->
storage, row counts in the same snapshot) costs little next to pg_dump alone, and whether restoring through
seedvault (storage -> decrypt -> decompress -> pg_restore, then per-table row-count verification) costs
little next to a plain pg_restore from a local file. Absolute seconds depend on the machine and on whoever
else uses it, so every figure is a ratio against anchors measured in the same run, on the same database,
interleaved run by run (the order rotates, so no command always runs first or last).

What it does, per PostgreSQL major (15 = Debian's apt package, 16 = the pgserver wheel; ``--pg-major``):
  1. starts a throwaway cluster with seedvault's ``LocalCluster`` (127.0.0.1, scram-sha-256; the password
     only in a 0600 pgpass file handed over as PGPASSFILE, never in argv; fsync=off because the machine's
     durability is not what is measured, and a faster server makes the ratios stricter, not looser);
  2. generates a database of ``--size-mb`` (default 1024 MB, pg_database_size) shaped like the platform's:
     a wide time-series table, relational tables with primary/foreign keys and indexes, text and jsonb;
     server-side ``INSERT ... SELECT generate_series``, then VACUUM (FREEZE, ANALYZE) so no run sets hint bits;
  3. backups, ``--runs`` rounds of (rotating order):
       * ``pg_dump -Fc -Z0 > /dev/null``                               (anchor; goal: seedvault <= 1.3x)
       * ``seedvault backup postgres`` to a local repository in the bench dir (globals and counts included)
       * ``pg_dump -Fc | gzip | openssl enc -aes-256-cbc -pbkdf2 -iter 100000``   (the old pipeline)
       * ``pg_dump -Fc -Z0 | zstd -T0 -3 | openssl enc -aes-256-ctr``            (the "by hand" anchor)
     plus any ``--variant KEY=VALUE[,KEY=VALUE]`` (seedvault settings through SEEDVAULT_* variables, e.g.
     ``zstd_threads=2``) as extra seedvault rows, to test engine-side changes without editing the engine;
  4. restores, ``--runs`` rounds of: single-job ``pg_restore`` from a local uncompressed ``-Fc -Z0`` file
     into a fresh database (anchor; goal: seedvault <= 1.1x) and ``seedvault restore postgres`` into a fresh
     database (its wall time includes CREATE DATABASE and verification; both are reported separately).
Peak RSS: the seedvault process alone (VmHWM sampled from /proc every 50 ms; goal <= 200 MB) and wait4's
ru_maxrss of the process tree (max over seedvault and its pg_dump/pg_restore children).
Ratios use the best (minimum) of the runs for every command; medians are printed too and are in ``--json``.
For investigating: ``--quick`` (backup phase: raw pg_dump and the seedvault rows only), ``--restore-only``,
``--seedvault-cmd`` (run a patched CLI; upper-case ``--variant`` keys reach it as environment variables).
Everything (clusters, files, repository) is removed at the end, also on failure, Ctrl-C or SIGTERM.

Usage: python3 bench/postgres.py [--size-mb 1024] [--pg-major 15|16|both] [--runs 3] [--dir /var/tmp] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from seedvault.errors import SeedvaultError
from seedvault.sources.postgres.binaries import PgBinaries, find_client_binaries, find_server_binaries
from seedvault.sources.postgres.cluster import HOST, LocalCluster

CLI = [sys.executable, "-m", "seedvault.cli.app"]  # --seedvault-cmd replaces it (e.g. a patched build)
DB = "benchdb"
GOALS = {"backup": 1.3, "restore": 1.1, "rss_mb": 200.0}
SERVER_CONF = {
    "fsync": "off",
    "max_wal_size": "4GB",
    "maintenance_work_mem": "128MB",
    "max_connections": "30",
}
# Share of the target size per table family (heap); indexes come on top and are counted in the final size.
SHARES = {"metrics": 0.50, "orders": 0.16, "customers": 0.06, "events": 0.12}
BATCH_ROWS = {"metrics": 400_000, "orders": 200_000, "customers": 100_000, "events": 100_000}

SCHEMA = """
CREATE TABLE devices (
    id int PRIMARY KEY, site text NOT NULL, model text NOT NULL, installed date NOT NULL, meta jsonb NOT NULL);
CREATE TABLE metrics (
    ts timestamptz NOT NULL, device_id int NOT NULL, temperature double precision, humidity double precision,
    pressure double precision, voltage double precision, current double precision, power double precision,
    energy_kwh double precision, rssi int, status smallint NOT NULL, flags int NOT NULL, firmware text);
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, country char(2) NOT NULL,
    created_at timestamptz NOT NULL, attrs jsonb NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, created_at timestamptz NOT NULL, status text NOT NULL,
    total numeric(12,2) NOT NULL, items jsonb NOT NULL, note text);
CREATE TABLE events (
    id bigint PRIMARY KEY, ts timestamptz NOT NULL, level text NOT NULL, source text NOT NULL,
    message text NOT NULL, payload jsonb);
INSERT INTO devices
SELECT i, 'site-' || (i % 37), (ARRAY['tx-100','tx-200','rx-9','gw-1'])[1 + i % 4],
       date '2020-01-01' + (i % 1500),
       jsonb_build_object('rack', i % 12, 'fw', '2.' || (i % 9), 'tags', jsonb_build_array('a' || i % 5, 'b'))
FROM generate_series(1, 1000) AS i;
"""

INSERTS = {
    "metrics": """
INSERT INTO metrics
SELECT timestamptz '2025-01-01 00:00:00+00' + (i / 1000) * interval '10 seconds', 1 + i % 1000,
       round((21 + 4 * sin(i / 86400.0) + random())::numeric, 2), round((40 + 20 * random())::numeric, 1),
       round((1013 + 5 * cos(i / 50000.0))::numeric, 1), round((229 + 3 * random())::numeric, 2),
       round((random() * 16)::numeric, 3), random() * 3600, (i / 1000) * 0.001 + random(),
       -40 - (i % 50), (CASE WHEN i % 997 = 0 THEN 2 ELSE 0 END)::smallint, (i % 7) << 2,
       CASE WHEN i % 100 = 0 THEN 'fw-2.' || (i % 9) END
FROM generate_series({lo}::bigint, {hi}::bigint) AS i
""",
    "customers": """
INSERT INTO customers
SELECT i, 'Customer ' || i || ' ' || md5(i::text), 'user' || i || '@example' || (i % 97) || '.com',
       (ARRAY['DE','FR','NL','US','GB','SE','PL','IT'])[1 + i % 8],
       timestamptz '2019-01-01 00:00:00+00' + i * interval '7 minutes',
       jsonb_build_object('tier', (ARRAY['free','pro','enterprise'])[1 + i % 3], 'newsletter', i % 2 = 0,
                          'score', round((random() * 100)::numeric, 1), 'tags', jsonb_build_array('t' || i % 13))
FROM generate_series({lo}::bigint, {hi}::bigint) AS i
""",
    "orders": """
INSERT INTO orders
SELECT i, 1 + (i * 7919) % {customers}, timestamptz '2023-01-01 00:00:00+00' + i * interval '13 seconds',
       (ARRAY['new','paid','shipped','delivered','returned'])[1 + i % 5], round((random() * 900 + 5)::numeric, 2),
       jsonb_build_array(
           jsonb_build_object('sku', 'SKU-' || (i % 5000), 'qty', 1 + i % 4,
                              'price', round((random() * 90)::numeric, 2)),
           jsonb_build_object('sku', 'SKU-' || (i % 3001), 'qty', 1, 'price', round((random() * 40)::numeric, 2))),
       CASE WHEN i % 10 = 0 THEN 'gift wrap, leave at the door ' || md5(i::text) END
FROM generate_series({lo}::bigint, {hi}::bigint) AS i
""",
    "events": """
INSERT INTO events
SELECT i, timestamptz '2025-06-01 00:00:00+00' + i * interval '2 seconds',
       (ARRAY['DEBUG','INFO','INFO','INFO','WARN','ERROR'])[1 + i % 6], 'svc-' || (i % 23),
       'request ' || md5(i::text) || ' handled in ' || (i % 500) || ' ms by worker ' || (i % 16)
           || CASE WHEN i % 6 = 5 THEN ': upstream timeout after 3 retries, giving up' ELSE '' END,
       CASE WHEN i % 3 = 0 THEN jsonb_build_object('trace', md5((i * 3)::text), 'user', i % 10000,
                                                  'path', '/api/v2/items/' || (i % 777)) END
FROM generate_series({lo}::bigint, {hi}::bigint) AS i
""",
}

INDEXES = """
CREATE INDEX metrics_device_ts ON metrics (device_id, ts);
CREATE INDEX metrics_ts ON metrics USING brin (ts);
CREATE UNIQUE INDEX customers_email ON customers (email);
CREATE INDEX customers_created ON customers (created_at);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_created ON orders (created_at);
CREATE INDEX orders_open ON orders (status) WHERE status IN ('new', 'paid');
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_payload ON events USING gin (payload jsonb_path_ops);
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE metrics ADD CONSTRAINT metrics_device_fk FOREIGN KEY (device_id) REFERENCES devices (id);
"""


# --- processes: one at a time, in its own session so cleanup can kill the whole pipeline -----------------
_current: list[subprocess.Popen] = []


@dataclass
class Timing:
    seconds: float
    maxrss_kb: int  # wait4 ru_maxrss: max over the process and the children it waited for
    cpu: float  # user + system seconds of the process tree (PostgreSQL's own backend not included)
    hwm_kb: int = 0  # the process's own VmHWM, sampled
    stdout: str = ""
    server_cpu: float = 0.0  # user + system seconds of server backends that exited meanwhile


_server_pid: list[int] = []  # the postmaster of the server under test: its reaped backends' CPU is ours


def _reaped_cpu(pid: int) -> float:
    """cutime + cstime of a process: the CPU of its children that exited (PostgreSQL backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(argv: list[str], env: dict[str, str], *, what: str, capture: bool = False) -> Timing:
    """Run one command (argv; pipelines via bash -o pipefail); time it and measure its memory."""
    server0 = _reaped_cpu(_server_pid[0]) if _server_pid else 0.0
    t0 = time.perf_counter()
    out = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 (closed below, after wait4)
    proc = subprocess.Popen(
        argv, env=env, stdout=out or subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    _current.append(proc)
    hwm = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            hwm[0] = max(hwm[0], _hwm_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err_text: list[bytes] = []
    reader = threading.Thread(target=lambda: err_text.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    reader.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        done.set()
        _current.remove(proc)
    seconds = time.perf_counter() - t0
    reader.join()
    sampler.join()
    if proc.returncode != 0:
        tail = b"".join(err_text).decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    text = ""
    if out is not None:
        out.seek(0)
        text = out.read().decode()
        out.close()
    if _server_pid:
        time.sleep(0.3)  # untimed: the backend exits (and is reaped) a moment after its client
    server_cpu = _reaped_cpu(_server_pid[0]) - server0 if _server_pid else 0.0
    return Timing(seconds, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, hwm[0], text, server_cpu)


def kill_current() -> None:
    for proc in list(_current):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class BenchError(Exception):
    pass


# --- one server ------------------------------------------------------------------------------------------
@dataclass
class Server:
    major: int
    cluster: LocalCluster
    pgpass: Path
    client: PgBinaries
    home: Path

    def connect(self, db: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.cluster.conninfo(db, "postgres"), passfile=str(self.pgpass), autocommit=True)

    def dsn(self, db: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.cluster.port}/{db}"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            **base,
            "PGHOST": HOST,
            "PGPORT": str(self.cluster.port),
            "PGUSER": "postgres",
            "PGPASSFILE": str(self.pgpass),
        }

    def tool(self, name: str) -> str:
        return str(self.client.tool(name))


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def server(major: int, binaries: PgBinaries, work: Path) -> Iterator[Server]:
    home = work / f"pg{major}"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    password = "bench-" + secrets.token_urlsafe(24)
    cluster = LocalCluster(home / "data", binaries=binaries)
    try:
        pwfile = home / ".initdb-password"
        _private_file(pwfile, password + "\n")
        try:
            cluster.initdb("postgres", password_file=pwfile, extra_conf=SERVER_CONF, sync=False)
        finally:
            pwfile.unlink(missing_ok=True)
        cluster.start(timeout=120)
        pgpass = home / "pgpass"
        _private_file(pgpass, f"{HOST}:{cluster.port}:*:postgres:{password}\n")
        yield Server(major, cluster, pgpass, find_client_binaries(major), home)
    finally:
        with contextlib.suppress(Exception):
            cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


# --- data ------------------------------------------------------------------------------------------------
def _insert(table: str, lo: int, hi: int, customers: int) -> bytes:
    """One batch of server-side generated rows (integers only are formatted in; no user input)."""
    return INSERTS[table].format(lo=int(lo), hi=int(hi), customers=max(int(customers), 1)).encode()


def generate(srv: Server, size_mb: int, log: Any) -> dict[str, Any]:
    """Fill DB up to size_mb (pg_database_size, indexes included); returns the database's shape."""
    target = size_mb << 20
    t0 = time.perf_counter()
    with srv.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    with srv.connect(DB) as conn:
        conn.execute(SCHEMA)
        rows: dict[str, int] = dict.fromkeys(INSERTS, 0)
        heap_goal = {t: int(target * share) for t, share in SHARES.items()}
        # customers first: orders reference them.
        for table in ("customers", "orders", "metrics", "events"):
            while True:
                size = conn.execute("SELECT pg_relation_size(%s)", (table,)).fetchone()[0]
                if size >= heap_goal[table]:
                    break
                lo, hi = rows[table] + 1, rows[table] + BATCH_ROWS[table]
                conn.execute(_insert(table, lo, hi, rows["customers"]))
                rows[table] = hi
            log(f"  pg{srv.major}: {table}: {rows[table]:,} rows, heap {size / 2**20:.0f} MB")
        conn.execute(INDEXES)
        while conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] < target:
            lo, hi = rows["metrics"] + 1, rows["metrics"] + BATCH_ROWS["metrics"]
            conn.execute(_insert("metrics", lo, hi, rows["customers"]))
            rows["metrics"] = hi
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    rows["devices"] = 1000
    seconds = time.perf_counter() - t0
    log(
        f"  pg{srv.major}: database {db_size / 2**20:.0f} MB, {sum(rows.values()):,} rows, generated in {seconds:.0f} s"
    )
    return {"db_size_mb": round(db_size / 2**20, 1), "rows": rows, "generate_seconds": round(seconds, 1)}


def fresh_db(srv: Server, name: str) -> None:
    with srv.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def drop_db(srv: Server, name: str) -> None:
    with srv.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute("CHECKPOINT")  # the next run does not pay for this run's dirty buffers


# --- one major -------------------------------------------------------------------------------------------
@dataclass
class Samples:
    runs: dict[str, list[Timing]] = field(default_factory=dict)

    def add(self, name: str, t: Timing) -> None:
        self.runs.setdefault(name, []).append(t)

    def best(self, name: str) -> float:
        return min(t.seconds for t in self.runs[name])

    def median(self, name: str) -> float:
        return statistics.median(t.seconds for t in self.runs[name])


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {}
    for spec in specs:
        env: dict[str, str] = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if sep and re.fullmatch(r"[a-z_0-9]+", key):
                env["SEEDVAULT_" + key.upper()] = value.strip()  # a seedvault setting
            elif sep and re.fullmatch(r"[A-Z_][A-Z_0-9]*", key):
                env[key] = value.strip()  # passed as is (for a patched --seedvault-cmd)
            else:
                raise SystemExit(f"--variant wants KEY=VALUE[,KEY=VALUE] (seedvault setting names), got {spec!r}")
        variants[f"seedvault backup [{spec}]"] = env
    return variants


def bench_major(srv: Server, args: argparse.Namespace, base_env: dict[str, str], work: Path, log: Any) -> dict:
    shape = generate(srv, args.size_mb, log)
    _server_pid[:] = [srv.cluster.pid() or 0]
    env = srv.env(base_env)
    d = srv.home
    pg_dump, pg_restore = srv.tool("pg_dump"), srv.tool("pg_restore")
    pf = f"file:{work / 'openssl-pass'}"
    dsn = srv.dsn(DB)
    backups: dict[str, list[str]] = {
        "pg_dump -Fc -Z0 > /dev/null": ["bash", "-c", f"exec {pg_dump} -Fc -Z0 -d {DB} > /dev/null"],
        "seedvault backup": [*CLI, "backup", "postgres", "--dsn", dsn, "--json"],
        "old: pg_dump -Fc | gzip | openssl cbc": [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{pg_dump} -Fc -d {DB} | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 -pass {pf} "
            f"> {d}/old.enc",
        ],
        "pg_dump -Z0 | zstd -T0 -3 | openssl ctr": [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{pg_dump} -Fc -Z0 -d {DB} | zstd -T0 -3 -q -c | openssl enc -aes-256-ctr -pbkdf2 -iter 1 -pass {pf} "
            f"> {d}/anchor.enc",
        ],
    }
    variants = parse_variants(args.variant)
    for name in variants:
        backups[name] = backups["seedvault backup"]
    if args.quick:
        for name in ("old: pg_dump -Fc | gzip | openssl cbc", "pg_dump -Z0 | zstd -T0 -3 | openssl ctr"):
            del backups[name]
    # Untimed warm-up: the page cache holds the database for every timed run alike, and the generating
    # backends are reaped before server CPU is first sampled.
    run(backups["pg_dump -Fc -Z0 > /dev/null"], env, what="warm-up pg_dump")
    samples = Samples()
    summaries: dict[str, list[dict]] = {}
    last_id: dict[str, str] = {}
    names = list(backups)
    if args.restore_only:  # one untimed seedvault backup, then only the restore phase
        names = ["seedvault backup"]
    for r in range(1 if args.restore_only else args.runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run_env = {**env, **variants.get(name, {})}
            if name in last_id:  # the same repository state every run
                run([*CLI, "delete", last_id.pop(name), "--yes"], run_env, what="seedvault delete")
            t = run(backups[name], run_env, what=name, capture=name.startswith("seedvault"))
            samples.add(name, t)
            if t.stdout:
                summary = json.loads(t.stdout)
                summaries.setdefault(name, []).append(summary)
                last_id[name] = summary["id"]
            log(f"  pg{srv.major} run {r + 1}: {name:44s} {t.seconds:7.1f} s")
    if args.restore_only:
        samples.runs.clear()
    for name in list(last_id):
        if name != "seedvault backup":
            run([*CLI, "delete", last_id.pop(name), "--yes"], {**env, **variants[name]}, what="seedvault delete")
    backup_id = last_id["seedvault backup"]
    if args.quick:
        return report(
            srv, args, shape, samples, summaries, [], {"seedvault": summaries["seedvault backup"][-1]["stored_size"]}
        )

    # The local uncompressed archive for the restore anchor (not timed).
    archive = d / "dump.Z0"
    run(["bash", "-c", f"exec {pg_dump} -Fc -Z0 -d {DB} > {archive}"], env, what="pg_dump to a file")
    restores: dict[str, list[str]] = {
        "pg_restore (1 job, local -Z0 file)": [
            pg_restore,
            "--no-password",
            "--exit-on-error",
            "-d",
            "r_plain",
            str(archive),
        ],
        "seedvault restore": [*CLI, "restore", "postgres", backup_id, "--target-dsn", srv.dsn("r_sv"), "--json"],
        # The same archive through a pipe, as seedvault feeds it: separates pipe-vs-file from seedvault's cost.
        "cat -Z0 file | pg_restore (1 job)": [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"cat {archive} | {pg_restore} --no-password --exit-on-error -d r_plain",
        ],
    }
    restore_reports: list[dict] = []
    rnames = list(restores)
    for r in range(args.runs):
        order = rnames[r % len(rnames) :] + rnames[: r % len(rnames)]
        for name in order:
            sv_run = name.startswith("seedvault")
            if not sv_run:
                fresh_db(srv, "r_plain")  # CREATE DATABASE not timed for the anchors (seedvault's includes it)
            t = run(restores[name], env, what=name, capture=sv_run)
            samples.add(name, t)
            if t.stdout:
                restore_reports.append(json.loads(t.stdout))
            drop_db(srv, "r_sv" if sv_run else "r_plain")
            log(f"  pg{srv.major} run {r + 1}: {name:44s} {t.seconds:7.1f} s")

    stored = {"seedvault": summaries["seedvault backup"][-1]["stored_size"]}
    for label, path in (("old", d / "old.enc"), ("zstd|openssl", d / "anchor.enc"), ("pg_dump -Fc -Z0", archive)):
        if path.exists():
            stored[label] = path.stat().st_size
    return report(srv, args, shape, samples, summaries, restore_reports, stored)


def report(
    srv: Server,
    args: argparse.Namespace,
    shape: dict,
    samples: Samples,
    summaries: dict[str, list[dict]],
    restore_reports: list[dict],
    stored: dict[str, int],
) -> dict:
    raw, plain = "pg_dump -Fc -Z0 > /dev/null", "pg_restore (1 job, local -Z0 file)"
    commands = {}
    for name, ts in samples.runs.items():
        commands[name] = {
            "best_s": round(min(t.seconds for t in ts), 2),
            "median_s": round(samples.median(name), 2),
            "all_s": [round(t.seconds, 2) for t in ts],
            "cpu_s_best_run": round(min(ts, key=lambda t: t.seconds).cpu, 1),
            "server_cpu_s_best_run": round(min(ts, key=lambda t: t.seconds).server_cpu, 1),
            "peak_rss_tree_mb": round(max(t.maxrss_kb for t in ts) / 1024, 1),
        }
        if name.startswith("seedvault"):
            commands[name]["peak_rss_self_mb"] = round(max(t.hwm_kb for t in ts) / 1024, 1)
    for name, sums in summaries.items():
        if name not in commands:  # the untimed backup of --restore-only
            continue
        best = min(sums, key=lambda s: s["seconds"]["total"])
        commands[name]["steps_s"] = best["steps"]
        commands[name]["seconds"] = best["seconds"]
        commands[name]["stored_mb"] = round(best["stored_size"] / 2**20, 1)
    if restore_reports:
        best_r = min(restore_reports, key=lambda s: s["seconds"]["total"])
        commands["seedvault restore"]["seconds"] = {k: round(v, 2) for k, v in best_r["seconds"].items()}
        commands["seedvault restore"]["rows_verified"] = best_r["rows_verified"]
    ratios: dict[str, float] = {}
    goals: dict[str, dict[str, Any]] = {}
    have = samples.runs.keys()
    old, zst, piped = (
        "old: pg_dump -Fc | gzip | openssl cbc",
        "pg_dump -Z0 | zstd -T0 -3 | openssl ctr",
        "cat -Z0 file | pg_restore (1 job)",
    )
    if raw in have:
        for name in have:
            if name.startswith("seedvault backup") or name in (old, zst):
                ratios[f"{name} / raw pg_dump"] = round(samples.best(name) / samples.best(raw), 3)
        goals["backup <= 1.3x raw pg_dump"] = _goal(ratios["seedvault backup / raw pg_dump"], GOALS["backup"])
    if zst in have:
        ratios["seedvault backup / zstd|openssl anchor"] = round(
            samples.best("seedvault backup") / samples.best(zst), 3
        )
    if old in have:
        ratios["old pipeline / seedvault backup"] = round(samples.best(old) / samples.best("seedvault backup"), 2)
    if plain in have:
        ratios["seedvault restore / pg_restore"] = round(samples.best("seedvault restore") / samples.best(plain), 3)
        ratios["seedvault restore / piped pg_restore"] = round(
            samples.best("seedvault restore") / samples.best(piped), 3
        )
        ratios["piped pg_restore / pg_restore"] = round(samples.best(piped) / samples.best(plain), 3)
        verify = min(r["seconds"].get("verify", 0.0) for r in restore_reports)
        ratios["seedvault restore without verify / pg_restore"] = round(
            (samples.best("seedvault restore") - verify) / samples.best(plain), 3
        )
        goals["restore <= 1.1x pg_restore"] = _goal(ratios["seedvault restore / pg_restore"], GOALS["restore"])
    # The goal is about the default settings; --variant rows show their own RSS in the table.
    rss = max(commands[n]["peak_rss_self_mb"] for n in ("seedvault backup", "seedvault restore") if n in commands)
    goals["peak RSS <= 200 MB"] = _goal(rss, GOALS["rss_mb"])
    return {
        "pg_major": srv.major,
        "server_bindir": str(srv.cluster.binaries.bindir),
        "client_bindir": str(srv.client.bindir),
        "size_mb_requested": args.size_mb,
        **shape,
        "runs": args.runs,
        "statistic": "best (minimum) of runs for ratios; medians alongside",
        "commands": commands,
        "ratios": ratios,
        "stored_mb": {k: round(v / 2**20, 1) for k, v in stored.items()},
        "goals": goals,
    }


def _goal(value: float, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "met": value <= limit}


def print_table(res: dict) -> None:
    print(
        f"\nPostgreSQL {res['pg_major']} ({res['server_bindir']}): database {res['db_size_mb']:.0f} MB, "
        f"{sum(res['rows'].values()):,} rows; {os.cpu_count()} cores; best of {res['runs']} runs (median in brackets)"
    )
    for name, c in res["commands"].items():
        extra = f"  rss tree {c['peak_rss_tree_mb']:6.1f} MB"
        if "peak_rss_self_mb" in c:
            extra += f", self {c['peak_rss_self_mb']:6.1f} MB"
        print(
            f"  {name:46s} {c['best_s']:8.1f} s [{c['median_s']:7.1f}]  cpu {c['cpu_s_best_run']:6.1f} s"
            f" + server {c['server_cpu_s_best_run']:5.1f} s{extra}"
        )
        if "steps_s" in c:
            print(f"  {'':46s} steps {c['steps_s']}  seconds {c['seconds']}")
        elif "seconds" in c:
            print(f"  {'':46s} seconds {c['seconds']}")
    for k, v in res["ratios"].items():
        print(f"  ratio {k:58s} {v:6.2f}")
    if "stored_mb" in res:
        print(f"  stored MB: {res['stored_mb']}")
    for k, g in res["goals"].items():
        print(f"  goal {k:30s} {g['value']:8.2f}  {'met' if g['met'] else 'NOT MET'}")


def pick_majors(choice: str) -> tuple[list[tuple[int, PgBinaries]], list[str]]:
    wanted = [15, 16] if choice == "both" else [int(choice)]
    found, missing = [], []
    for major in wanted:
        try:
            found.append((major, find_server_binaries(major)))
        except SeedvaultError as exc:
            missing.append(f"PostgreSQL {major}: {exc.one_line()}")
    return found, missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="database size (pg_database_size), default 1024")
    ap.add_argument("--pg-major", choices=("15", "16", "both"), default="both")
    ap.add_argument("--runs", type=int, default=3)
    # Disk, not tmpfs: the server runs as an unprivileged user and must traverse it; both sides write there.
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--variant", action="append", default=[], help="extra seedvault backup row, e.g. zstd_threads=2")
    ap.add_argument("--quick", action="store_true", help="backup only: raw pg_dump and seedvault (+ variants)")
    ap.add_argument("--restore-only", action="store_true", help="restore phase only (one untimed backup first)")
    ap.add_argument("--seedvault-cmd", help="how to run seedvault (default: this python -m seedvault.cli.app)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.seedvault_cmd:
        CLI[:] = args.seedvault_cmd.split()
    if args.runs < 1 or args.size_mb < 1:
        raise SystemExit("--runs and --size-mb must be positive")
    parse_variants(args.variant)
    for tool in ("zstd", "gzip", "openssl", "bash"):
        if not shutil.which(tool):
            raise SystemExit(f"bench needs {tool} on PATH")
    found, missing = pick_majors(args.pg_major)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for m in missing:
        log(f"not available: {m}")
    if not found or (args.pg_major != "both" and missing):
        raise SystemExit(f"requested PostgreSQL {args.pg_major} is not available; nothing measured")
    if missing:
        log(f"running only PostgreSQL {', '.join(str(m) for m, _ in found)}")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="seedvault-pgbench-", dir=args.dir))
    work.chmod(0o755)  # the server user traverses it to its data directory
    results: list[dict] = []
    try:
        _private_file(work / "openssl-pass", secrets.token_urlsafe(24) + "\n")
        key = work / "master.key"
        base_env = {
            **os.environ,
            "SEEDVAULT_REPOSITORY": f"file://{work / 'repo'}",
            "SEEDVAULT_KEY_FILE": str(key),
            "CI": "1",
        }
        for name in [
            k
            for k in base_env
            if k.startswith("SEEDVAULT_") and k not in ("SEEDVAULT_REPOSITORY", "SEEDVAULT_KEY_FILE")
        ]:
            del base_env[name]  # the bench decides the settings (defaults, or --variant)
        base_env.pop("PGPASSWORD", None)
        run([*CLI, "key", "generate", "-o", str(key)], base_env, what="seedvault key generate")
        run([*CLI, "init"], base_env, what="seedvault init")
        for major, binaries in found:
            log(f"PostgreSQL {major}: {binaries.bindir} ({binaries.origin}); generating {args.size_mb} MB")
            with server(major, binaries, work) as srv:
                results.append(bench_major(srv, args, base_env, work, log))
    except KeyboardInterrupt:
        kill_current()
        log("interrupted; cleaning up")
        raise SystemExit(130) from None
    except (BenchError, SeedvaultError, psycopg.Error) as exc:
        kill_current()
        raise SystemExit(f"bench failed: {exc}") from None
    finally:
        kill_current()
        shutil.rmtree(work, ignore_errors=True)
    out = {"cores": os.cpu_count(), "not_available": missing, "results": results}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for res in results:
            print_table(res)


if __name__ == "__main__":
    main()
