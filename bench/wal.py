"""WAL archiving, physical base backup and PITR benchmark: seedvault against pgBackRest, pg_basebackup and
barman-cloud, in one run, against Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``).

Why: PostgreSQL runs ``archive_command`` once per 16 MB segment, one at a time; if that is slower than the
server writes WAL, ``pg_wal`` grows until the disk is full. Base backups and point-in-time restores are the
other half of the promise. Absolute seconds depend on the machine and on whoever else uses it, so every
figure is a ratio against peers measured in the same run, on the same data, interleaved run by run (the
order rotates, so no command always runs first or last). Ratios use the best run of each command; medians
are shown alongside and every run is in ``--json``.

Everything runs as PostgreSQL's unprivileged OS user (``postgres``), as it does in production: the
archive/restore commands of both tools, and also the backups and pgBackRest's restore (so that every file
of the ``file://`` repositories has one owner). seedvault runs from the venv ``tests/fixtures/pgvenv.py``
builds from ``/usr/bin/python3`` (the ``/root`` interpreter is out of that user's reach; the copied source
is byte-compiled first, as an installed package is), with a TOML config (repository, key *file*, S3
credentials *file*, state dir). Only ``seedvault restore postgres-pitr`` runs as root with this
interpreter, as an operator (and the tests) run it: under Debian 12's Python 3.11.2 it fails (tarfile's
``filter=`` needs 3.11.4); the restored server's ``wal-fetch`` still runs from the venv as ``postgres``.
Keys, cipher passphrases and S3 secrets live only in 0600 files owned by that user; none is on a command
line or in the output.

1. **wal-push**: ``--segments`` (default 48) real 16 MB segments from a pgbench load (``pgbench -i`` then
   tpcb-like transactions with a checkpoint every round, so full-page images appear as they do in
   production) on a throwaway PG15 cluster, copied once into a staging data directory (``global/pg_control``,
   ``pg_wal/<segments>`` and their ``archive_status/*.ready``, the state of a server with a backlog). Each
   row pushes all of them one process per segment, sequentially, exactly as the archiver does (cwd = the
   data directory, argument ``pg_wal/NAME``, minimal environment), into a fresh repository per run:
     * ``seedvault wal-push`` to a local ``file://`` repository, against
     * ``pgbackrest archive-push`` synchronous (compress-type=zst, repo1-cipher-type=aes-256-cbc, repository
       on the same disk). Goal: seedvault >= 1.0x pgBackRest's segments per second.
     * ``seedvault wal-push`` to a moto S3 endpoint (a local ``moto.server`` subprocess), beside
     * ``barman-cloud-wal-archive --endpoint-url`` (the Python/boto3 peer) to the same endpoint, ``--gzip``
       (``--barman-compression``) and SSE ``AES256`` (barman has no client-side encryption); with the daemon
       available also ``wal_daemon = "auto"`` to the same endpoint (one boto3 client for all segments).
     * When ``seedvault wal-daemon --help`` exits 0: ``wal-push`` handing over to a running ``wal-daemon``
       (local repository; it works ahead on the ``.ready`` files), and beside it ``pgbackrest archive-push``
       with ``archive-async=y`` (process-max=2), pgBackRest's own work-ahead mode; and ``wal-push`` with
       ``wal_daemon = "auto"`` (RUNBOOK 17.5: nothing started by hand, the first push starts the daemon,
       which works ahead from then on). Skipped otherwise.
     Goals: the direct path and the ``wal_daemon = "auto"`` row are each compared with synchronous
     ``pgbackrest archive-push``; the latter is seedvault as RUNBOOK 17.5 configures it, the one-line
     counterpart of pgBackRest's ``archive-async=y``.
2. **Base backup** of a cluster of ``--size-mb`` (default 1024; the data set of ``bench/postgres.py``):
     * ``pg_basebackup -Ft -D DIR -c fast`` to local disk (the anchor; fast checkpoint like the others),
     * ``seedvault backup postgres-base`` (zstd + AES-256-GCM, local ``file://`` repository),
     * ``pgbackrest backup --type=full`` (zst, aes-256-cbc, process-max=2, start-fast).
       Goal: seedvault's time <= 1.0x pgBackRest's.
   The server archives to both tools (each backup finds its WAL in its own repository; every row pays the
   same archiving) through ``archive_command = '.../seedvault-and-pgbackrest --config C wal-push %p'``, a sh
   wrapper that runs ``pgbackrest archive-push`` and then execs seedvault: seedvault's PITR derives its
   restore_command and read-ahead daemon from archive_command, so it must see a command of its own, as
   on a seedvault-only server. After the backups: a pgbench load of ``--replay-mb`` (default 256) and a
   marker row, archived by both.
3. **PITR** from each tool's newest backup into a new, empty data directory, replaying the archived WAL to
   its end, timed until the server accepts connections and is out of recovery (the same poll for both):
     * ``seedvault restore postgres-pitr --latest --timeline 1`` (layout, pg_verifybackup, start, replay
       through its read-ahead wal-daemon, promotion; ``--timeline 1`` so every run replays the same WAL),
     * ``pgbackrest restore`` + start the server + wait for promotion.
       Goal: seedvault's time <= 1.2x pgBackRest's.
   Both restored servers run with archive_mode=off; the marker row is checked on each (not timed). seedvault
   stores each new timeline's history itself, so its later runs probe a few more history files.

Peak RSS of every command (the largest of it and the children it waited for) comes from ``/usr/bin/time
-f %M``: wait4 on a child forked from this Python process would report at least the bench's own RSS.
Everything (servers, moto, temporary directories) is removed at the end, also on failure, Ctrl-C or
SIGTERM (``--keep`` keeps the directory for inspection).

Needs: ``apt-get install -y pgbackrest barman-cli-cloud`` (bench-only tools; ``--install-tools`` runs it),
PostgreSQL 15 server packages, and for the S3 rows the ``moto[server]`` test dependency.

Usage: python3 bench/wal.py [--size-mb 1024] [--segments 48] [--runs 3] [--json] [--skip-s3] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from seedvault.crypto.keys import generate_raw_key
from seedvault.errors import SeedvaultError
from seedvault.sources.postgres.binaries import PgBinaries
from seedvault.sources.postgres.cluster import HOST, LocalCluster, default_run_as, free_loopback_port
from seedvault.sources.postgres.wal.daemon import daemon_pids

ROOT = Path(__file__).resolve().parents[1]
SEG = 16 << 20
STANZA = "bench"
GOALS = {"wal_push_ratio_min": 1.0, "base_backup_ratio_max": 1.0, "pitr_ratio_max": 1.2}
S3_REGION = "us-east-1"
APT_TOOLS = {"pgbackrest": "pgbackrest", "barman-cloud-wal-archive": "barman-cli-cloud"}
# Row names (also the JSON keys).
SV_FILE = "seedvault wal-push (file://)"
PGBR_SYNC = "pgbackrest archive-push (sync, zst, aes-256-cbc)"
SV_DAEMON = "seedvault wal-push via wal-daemon (file://)"
SV_AUTO = "seedvault wal-push, wal_daemon=auto (file://)"
PGBR_ASYNC = "pgbackrest archive-push (archive-async, process-max=2)"
SV_S3 = "seedvault wal-push (S3, moto)"
SV_S3_AUTO = "seedvault wal-push, wal_daemon=auto (S3, moto)"
BARMAN = "barman-cloud-wal-archive (S3, moto)"
PGBB = "pg_basebackup -Ft -D (local disk)"
SV_BASE = "seedvault backup postgres-base"
PGBR_FULL = "pgbackrest backup --type=full"
SV_PITR = "seedvault restore postgres-pitr --latest"
PGBR_RESTORE = "pgbackrest restore + start + promote"


def _bench_postgres() -> Any:
    """bench/postgres.py, for its data set (schema, generator, server settings)."""
    if "bench_postgres" in sys.modules:
        return sys.modules["bench_postgres"]
    spec = importlib.util.spec_from_file_location("bench_postgres", Path(__file__).with_name("postgres.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_postgres"] = module
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --- processes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    @classmethod
    def of(cls, name: str) -> User:
        pw = pwd.getpwnam(name)
        return cls(name, pw.pw_uid, pw.pw_gid)

    def own(self, path: Path, mode: int) -> Path:
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)
        return path

    def mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return self.own(path, mode)

    def private_file(self, path: Path, text: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return self.own(path, 0o600)

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": os.getgrouplist(self.name, self.gid)}


@dataclass
class Timing:
    seconds: float
    maxrss_kb: int  # peak RSS of the command (and the children it waited for), from /usr/bin/time
    cpu: float  # user + system seconds of the command and its waited-for children
    stdout: str = ""
    stderr: str = ""


_current: list[subprocess.Popen] = []
# /usr/bin/time -o files go here (owned by the server user, who runs time). Measured through time, not
# wait4: a child forked from this process would report at least this process's own RSS (~45 MB).
_rss_dir: list[Path] = []


def run(
    argv: list[Any],
    env: dict[str, str],
    *,
    what: str,
    user: User | None = None,
    cwd: Path | str = "/",
    capture: bool = False,
    check: bool = True,
) -> Timing:
    """Run one command (as ``user``), timing it; raises BenchError naming ``what`` on a non-zero exit."""
    out = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 (closed below)
    err = tempfile.TemporaryFile()  # noqa: SIM115
    rss_file = None
    argv = [str(a) for a in argv]
    if _rss_dir:
        fd, name = tempfile.mkstemp(prefix="rss-", dir=_rss_dir[0])
        os.close(fd)
        rss_file = Path(name)
        if user:
            user.own(rss_file, 0o600)
        argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=out or subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
        **(user.popen_kwargs() if user else {}),
    )
    _current.append(proc)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:  # Ctrl-C/SIGTERM: the command's whole session goes before anything is cleaned up
        _stop_session(proc)
        raise
    finally:
        _current.remove(proc)
    seconds = time.perf_counter() - t0
    maxrss = usage.ru_maxrss
    if rss_file is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            maxrss = int(rss_file.read_text().split()[-1])
        rss_file.unlink(missing_ok=True)
    err.seek(0)
    err_text = err.read().decode(errors="replace")
    err.close()
    text = ""
    if out is not None:
        out.seek(0)
        text = out.read().decode(errors="replace")
        out.close()
    if check and proc.returncode != 0:
        tail = err_text.strip().splitlines()[-6:]
        raise BenchError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    return Timing(seconds, maxrss, usage.ru_utime + usage.ru_stime, text, err_text)


def _stop_session(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT to the command's session (seedvault cleans up after itself), SIGKILL if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(proc.pid, os.WNOHANG)[0]:
                break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, 0)


def kill_current() -> None:
    for proc in list(_current):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --- the bench's world: directories, secrets, tools ------------------------------------------------------
@dataclass
class World:
    args: argparse.Namespace
    work: Path  # root-owned 0755
    home: Path  # owned by the server user: everything the tools write
    user: User
    binaries: PgBinaries
    exe: Path  # the seedvault wrapper the server user can run
    key: Path
    pgpass: Path
    password: str
    pgbr_pass: str
    aws_creds: Path | None = None
    endpoint: str | None = None
    s3_key_id: str = ""
    s3_secret: str = ""
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    clusters: list[LocalCluster] = field(default_factory=list)
    daemon_available: bool = False
    notes: dict[str, list[str]] = field(default_factory=dict)

    def tool(self, name: str) -> str:
        return str(self.binaries.tool(name))

    def base_env(self) -> dict[str, str]:
        """What a postmaster's archive_command gets: no AWS_*, no PG*, no SEEDVAULT_*."""
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def sv_env(self) -> dict[str, str]:
        return {**self.base_env(), "PG_BIN": str(self.binaries.bindir), "PGPASSFILE": str(self.pgpass), "CI": "1"}

    def pg_env(self, port: int) -> dict[str, str]:
        return {
            **self.base_env(),
            "PGHOST": HOST,
            "PGPORT": str(port),
            "PGUSER": "postgres",
            "PGPASSFILE": str(self.pgpass),
        }

    def sv(self, config: Path, *args: Any) -> list[Any]:
        return [self.exe, "--config", config, *args]

    def sv_config(self, path: Path, repository: str, state: Path, **extra: str) -> Path:
        self.user.mkdir(state, 0o700)
        lines = [f'repository = "{repository}"', f'key_file = "{self.key}"', f'wal_state_dir = "{state}"']
        lines += [f'{k} = "{v}"' for k, v in extra.items()]
        path.write_text("\n".join(lines) + "\n")
        return self.user.own(path, 0o644)

    def sv_s3_config(self, path: Path, bucket: str, state: Path, **extra: str) -> Path:
        assert self.endpoint and self.aws_creds
        return self.sv_config(
            path,
            f"s3://{bucket}/repo",
            state,
            s3_endpoint=self.endpoint,
            s3_region=S3_REGION,
            s3_credentials_file=str(self.aws_creds),
            **extra,
        )

    def pgbr_config(
        self, path: Path, repo: Path, pg_path: Path, *, cluster: LocalCluster | None = None, **extra
    ) -> Path:
        """A pgBackRest config (it holds the cipher passphrase: 0600, owned by the server user)."""
        base = path.parent
        settings = {
            "repo1-path": repo,
            "repo1-cipher-type": "aes-256-cbc",
            "repo1-cipher-pass": self.pgbr_pass,
            "repo1-retention-full": "99",
            "compress-type": "zst",
            "process-max": "2",
            "start-fast": "y",
            "archive-async": "n",
            "log-level-console": "warn",
            "log-level-stderr": "warn",
            "log-level-file": "off",
            "lock-path": self.user.mkdir(base / f"{path.stem}-lock", 0o700),
            "spool-path": self.user.mkdir(base / f"{path.stem}-spool", 0o700),
            **extra,
        }
        text = "[global]\n" + "".join(f"{k}={v}\n" for k, v in settings.items())
        text += f"\n[{STANZA}]\npg1-path={pg_path}\n"
        if cluster is not None:
            text += f"pg1-port={cluster.port}\npg1-socket-path={cluster.socket_dir}\npg1-user=postgres\n"
        path.unlink(missing_ok=True)
        return self.user.private_file(path, text)

    def pgbr(self, config: Path, *args: Any) -> list[Any]:
        return ["pgbackrest", f"--config={config}", f"--stanza={STANZA}", *args]

    def connect(self, port: int, db: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=HOST, port=port, dbname=db, user="postgres", passfile=str(self.pgpass), autocommit=True
        )

    def new_cluster(self, name: str, conf: dict[str, str]) -> LocalCluster:
        cluster = LocalCluster(self.home / name / "data", binaries=self.binaries, run_as=self.user.name)
        self.clusters.append(cluster)
        pwfile = self.user.private_file(self.home / f".pw-{name}", self.password + "\n")
        try:
            cluster.initdb("postgres", password_file=pwfile, extra_conf=conf, sync=False)
        finally:
            pwfile.unlink(missing_ok=True)
        cluster.start(timeout=120)
        return cluster


def check_tools(args: argparse.Namespace) -> None:
    wanted = ["pgbackrest"] + ([] if args.skip_s3 else ["barman-cloud-wal-archive"])
    missing = [t for t in wanted if not shutil.which(t)]
    if missing and args.install_tools:
        pkgs = [APT_TOOLS[t] for t in missing]
        log(f"installing {' '.join(pkgs)} with apt-get (bench-only tools)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True, env=env, stdout=subprocess.DEVNULL)
        missing = [t for t in wanted if not shutil.which(t)]
    if missing:
        pkgs = " ".join(APT_TOOLS[t] for t in missing)
        raise SystemExit(
            f"bench needs {', '.join(missing)}: apt-get install -y {pkgs} (or pass --install-tools"
            + ("" if args.skip_s3 else "; --skip-s3 drops the barman row")
            + ")"
        )
    bindir = Path(args.pg_bin)
    for tool in ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pgbench", "pg_verifybackup", "pg_controldata"):
        if not os.access(bindir / tool, os.X_OK):
            raise SystemExit(f"{bindir / tool} is missing: install Debian's postgresql-15 (or pass --pg-bin)")


def tool_version(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


# --- S3 (moto) ---------------------------------------------------------------------------------------------
def start_moto(w: World) -> None:
    port = free_loopback_port()
    log_path = w.work / "moto.log"
    logf = open(log_path, "wb")  # noqa: SIM115 (closed by the cleanup)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEEDVAULT_", "AWS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    from tests.fixtures.s3 import stop_process, wait_until_answering

    def stop() -> None:
        stop_process(proc)
        logf.close()

    w.cleanups.append(stop)
    endpoint = f"http://{HOST}:{port}"
    problem = wait_until_answering(endpoint, proc, 60)
    if problem:
        raise BenchError(f"moto server {problem}: {log_path.read_text(errors='replace')[-500:]}")
    w.endpoint = endpoint
    w.s3_key_id = "bench-" + secrets.token_hex(6)
    w.s3_secret = secrets.token_urlsafe(30)
    w.aws_creds = w.user.private_file(
        w.home / "secrets" / "aws-credentials",
        f"[default]\naws_access_key_id = {w.s3_key_id}\naws_secret_access_key = {w.s3_secret}\n",
    )


def s3_client(w: World) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=w.endpoint,
        region_name=S3_REGION,
        aws_access_key_id=w.s3_key_id,
        aws_secret_access_key=w.s3_secret,
    )


def s3_bucket_size(w: World, bucket: str) -> int:
    total = 0
    for page in s3_client(w).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(o["Size"] for o in page.get("Contents", ()))
    return total


def s3_drop_bucket(w: World, bucket: str) -> None:
    client = s3_client(w)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


# --- WAL load ----------------------------------------------------------------------------------------------
def current_lsn(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def pgbench_load(w: World, port: int, target_bytes: int, what: str) -> dict[str, Any]:
    """At least target_bytes of WAL: pgbench -i (bulk COPY, index builds), then tpcb-like rounds with a
    CHECKPOINT between rounds (full-page images, as production WAL has them)."""
    t0 = time.perf_counter()
    env = w.pg_env(port)
    with w.connect(port) as conn:
        start = current_lsn(conn)
        scale = max(1, int(target_bytes * 0.35 / (16 << 20)))
        run([w.tool("pgbench"), "-i", "-q", "-s", scale, "postgres"], env, what=f"{what}: pgbench -i")
        rounds = 0
        while current_lsn(conn) - start < target_bytes:
            conn.execute("CHECKPOINT")
            run(
                [w.tool("pgbench"), "-n", "-c", "4", "-j", "2", "-T", "5", "postgres"],
                env,
                what=f"{what}: pgbench",
            )
            rounds += 1
        produced = current_lsn(conn) - start
    seconds = time.perf_counter() - t0
    log(f"  {what}: {produced / 2**20:.0f} MB of WAL (pgbench -i -s {scale}, {rounds} x 5 s tpcb) in {seconds:.0f} s")
    return {"wal_mb": round(produced / 2**20, 1), "pgbench_scale": scale, "tpcb_rounds": rounds}


def stage_segments(w: World, n: int) -> tuple[Path, list[str], dict[str, Any]]:
    """Generate >= n real segments on a throwaway cluster; copy n of them into a staging data directory."""
    pgb = _bench_postgres()
    conf = {
        **pgb.SERVER_CONF,
        "wal_level": "replica",
        "archive_mode": "off",
        "wal_keep_size": f"{(n + 32) * 16}MB",
        "max_wal_size": f"{max(4096, (n + 32) * 16)}MB",
        "checkpoint_timeout": "30min",
    }
    log(f"WAL segments: generating {n} x 16 MB on a throwaway PostgreSQL {w.binaries.major} cluster")
    gen = w.new_cluster("walgen", conf)
    with w.connect(gen.port) as conn:
        conn.execute("SELECT pg_switch_wal()")
        first = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    shape = pgbench_load(w, gen.port, (n + 1) * SEG, "walgen")
    with w.connect(gen.port) as conn:
        conn.execute("SELECT pg_switch_wal()")
        last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    done = sorted(p.name for p in (gen.data_dir / "pg_wal").iterdir() if len(p.name) == 24 and first <= p.name < last)
    if len(done) < n:
        raise BenchError(f"the load produced {len(done)} complete segments, {n} wanted")
    names = done[:n]
    staging = w.user.mkdir(w.home / "staging", 0o700)
    w.user.mkdir(staging / "global", 0o700)
    w.user.mkdir(staging / "pg_wal" / "archive_status", 0o700)
    for rel in ("PG_VERSION", "global/pg_control"):
        shutil.copyfile(gen.data_dir / rel, staging / rel)
        w.user.own(staging / rel, 0o600)
    for name in names:
        shutil.copyfile(gen.data_dir / "pg_wal" / name, staging / "pg_wal" / name)
        w.user.own(staging / "pg_wal" / name, 0o600)
        # what a server with a backlog has: every completed segment is marked ready
        ready = staging / "pg_wal" / "archive_status" / f"{name}.ready"
        ready.touch()
        w.user.own(ready, 0o600)
    gen.destroy()
    w.clusters.remove(gen)
    shutil.rmtree(gen.data_dir.parent, ignore_errors=True)
    shape["segments"] = names
    return staging, names, shape


# --- 1: wal-push ---------------------------------------------------------------------------------------------
@dataclass
class PushRow:
    name: str
    # run index -> (argv for one segment name, environment, finish: stops what it started, returns stored bytes)
    prepare: Callable[[int], tuple[Callable[[str], list[Any]], dict[str, str], Callable[[], int]]]


def _push_rows(w: World, staging: Path) -> list[PushRow]:
    base = w.user.mkdir(w.home / "push", 0o755)
    rows: list[PushRow] = []
    finishers: list[Callable[[], None]] = []

    def sv_file(r: int):
        d = w.user.mkdir(base / f"sv-{r}", 0o755)
        cfg = w.sv_config(d / "seedvault.toml", f"file://{d / 'repo'}", d / "state")
        run(w.sv(cfg, "init"), w.sv_env(), what="seedvault init", user=w.user)
        return (lambda name: w.sv(cfg, "wal-push", f"pg_wal/{name}")), w.sv_env(), lambda: tree_size(d / "repo")

    def pgbr(r: int, async_: bool = False):
        d = w.user.mkdir(base / f"pgbr-{'a' if async_ else 's'}-{r}", 0o755)
        extra = {"archive-async": "y", "archive-push-queue-max": "4GiB"} if async_ else {}
        cfg = w.pgbr_config(d / "pgbackrest.conf", d / "repo", staging, **extra)
        run(w.pgbr(cfg, "stanza-create", "--no-online"), w.base_env(), what="pgbackrest stanza-create", user=w.user)
        return (lambda name: w.pgbr(cfg, "archive-push", f"pg_wal/{name}")), w.base_env(), lambda: tree_size(d / "repo")

    rows.append(PushRow(SV_FILE, sv_file))
    rows.append(PushRow(PGBR_SYNC, pgbr))
    if w.daemon_available:
        daemon: list[subprocess.Popen] = []

        def sv_daemon(r: int):
            d = w.user.mkdir(base / f"svd-{r}", 0o755)
            sock = d / "wal.sock"
            cfg = w.sv_config(d / "seedvault.toml", f"file://{d / 'repo'}", d / "state", wal_socket=str(sock))
            run(w.sv(cfg, "init"), w.sv_env(), what="seedvault init", user=w.user)
            errlog = open(d / "daemon.log", "wb")  # noqa: SIM115 (closed when the row ends)
            proc = subprocess.Popen(
                [str(a) for a in w.sv(cfg, "wal-daemon", "--pgdata", staging)],
                env=w.sv_env(),
                cwd=staging,
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **w.user.popen_kwargs(),
            )
            daemon.append(proc)
            _current.append(proc)
            deadline = time.monotonic() + 60
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"wal-daemon did not serve {sock}: {(d / 'daemon.log').read_text()[-400:]}")
                time.sleep(0.05)

            def size() -> int:
                proc.terminate()
                proc.wait(timeout=60)
                _current.remove(proc)
                daemon.remove(proc)
                errlog.close()
                stats = [ln for ln in (d / "daemon.log").read_text(errors="replace").splitlines() if "stopped" in ln]
                if stats:
                    w.notes.setdefault(SV_DAEMON, []).append(stats[-1].strip())
                    log(f"      {stats[-1].strip()[:160]}")
                return tree_size(d / "repo")

            return (lambda name: w.sv(cfg, "wal-push", f"pg_wal/{name}")), w.sv_env(), size

        def stop_daemons() -> None:
            for proc in list(daemon):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        def sv_auto(r: int):
            """RUNBOOK 17.5: nothing started by hand; the first wal-push starts the daemon itself."""
            d = w.user.mkdir(base / f"sva-{r}", 0o755)
            sock = d / "wal.sock"
            cfg = w.sv_config(
                d / "seedvault.toml", f"file://{d / 'repo'}", d / "state", wal_socket=str(sock), wal_daemon="auto"
            )
            run(w.sv(cfg, "init"), w.sv_env(), what="seedvault init", user=w.user)
            log_path = Path(f"{sock}.log")

            def size() -> int:
                _stop_auto_daemon(w, log_path, SV_AUTO)
                return tree_size(d / "repo")

            return (lambda name: w.sv(cfg, "wal-push", f"pg_wal/{name}")), w.sv_env(), size

        def stop_auto() -> None:
            for log_path in [*base.glob("sva-*/wal.sock.log"), *base.glob("sva3-*/wal.sock.log")]:
                for pid in daemon_pids(log_path.read_text(errors="replace")):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

        finishers.append(stop_daemons)
        finishers.append(stop_auto)
        rows.append(PushRow(SV_DAEMON, sv_daemon))
        rows.append(PushRow(SV_AUTO, sv_auto))
        rows.append(PushRow(PGBR_ASYNC, lambda r: pgbr(r, async_=True)))
    if w.endpoint:

        def sv_s3(r: int):
            d = w.user.mkdir(base / f"sv3-{r}", 0o755)
            bucket = f"sv-{uuid.uuid4().hex[:12]}"
            s3_client(w).create_bucket(Bucket=bucket)
            cfg = w.sv_s3_config(d / "seedvault.toml", bucket, d / "state")
            run(w.sv(cfg, "init"), w.sv_env(), what="seedvault init (S3)", user=w.user)

            def size() -> int:
                n = s3_bucket_size(w, bucket)
                s3_drop_bucket(w, bucket)
                return n

            return (lambda name: w.sv(cfg, "wal-push", f"pg_wal/{name}")), w.sv_env(), size

        def sv_s3_auto(r: int):
            """The same as SV_S3 with wal_daemon = "auto": the boto3 client is built once, not per segment."""
            d = w.user.mkdir(base / f"sva3-{r}", 0o755)
            bucket = f"sva-{uuid.uuid4().hex[:12]}"
            s3_client(w).create_bucket(Bucket=bucket)
            sock = d / "wal.sock"
            cfg = w.sv_s3_config(d / "seedvault.toml", bucket, d / "state", wal_socket=str(sock), wal_daemon="auto")
            run(w.sv(cfg, "init"), w.sv_env(), what="seedvault init (S3)", user=w.user)

            def size() -> int:
                _stop_auto_daemon(w, Path(f"{sock}.log"), SV_S3_AUTO)
                n = s3_bucket_size(w, bucket)
                s3_drop_bucket(w, bucket)
                return n

            return (lambda name: w.sv(cfg, "wal-push", f"pg_wal/{name}")), w.sv_env(), size

        def barman(r: int):
            bucket = f"barman-{uuid.uuid4().hex[:12]}"
            s3_client(w).create_bucket(Bucket=bucket)
            env = {
                **w.base_env(),
                "AWS_SHARED_CREDENTIALS_FILE": str(w.aws_creds),
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_DEFAULT_REGION": S3_REGION,
            }
            comp = {"gzip": ["--gzip"], "bzip2": ["--bzip2"], "snappy": ["--snappy"], "none": []}
            opts = ["--endpoint-url", w.endpoint, *comp[w.args.barman_compression], "--encryption", "AES256"]

            def size() -> int:
                n = s3_bucket_size(w, bucket)
                s3_drop_bucket(w, bucket)
                return n

            return (
                (lambda name: ["barman-cloud-wal-archive", *opts, f"s3://{bucket}/barman", STANZA, f"pg_wal/{name}"]),
                env,
                size,
            )

        rows.append(PushRow(SV_S3, sv_s3))
        if w.daemon_available:
            rows.append(PushRow(SV_S3_AUTO, sv_s3_auto))
        rows.append(PushRow(BARMAN, barman))
    w.cleanups.extend(finishers)
    return rows


def _stop_auto_daemon(w: World, log_path: Path, row: str) -> None:
    """Stop the one daemon a wal_daemon=auto row's first push started (its pid is in its log)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    pids = daemon_pids(text)
    if len(pids) != 1:
        raise BenchError(f"wal_daemon=auto started {len(pids)} daemons: {text[-400:]}")
    pid = pids[0]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "stopped;" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise BenchError(f"the automatically started wal-daemon did not stop: {text[-400:]}")
        time.sleep(0.05)
    stats = [ln for ln in log_path.read_text(errors="replace").splitlines() if "stopped" in ln]
    w.notes.setdefault(row, []).append(stats[-1].strip())
    log(f"      {stats[-1].strip()[:160]}")


def bench_push(w: World, staging: Path, names: list[str]) -> dict[str, Any]:
    rows = _push_rows(w, staging)
    for name in names:  # untimed: every row reads the segments from the page cache
        (staging / "pg_wal" / name).read_bytes()
    results: dict[str, dict[str, Any]] = {r.name: {"runs": []} for r in rows}
    for r in range(w.args.runs):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        for row in order:
            argv_of, env, finish = row.prepare(r)
            per: list[float] = []
            rss = 0
            notes: set[str] = set()
            t0 = time.perf_counter()
            for name in names:
                t = run(argv_of(name), env, what=f"{row.name} {name}", user=w.user, cwd=staging)
                per.append(t.seconds)
                rss = max(rss, t.maxrss_kb)
                notes.update(line.strip() for line in t.stderr.splitlines() if line.strip())
            total = time.perf_counter() - t0
            stored = finish()
            results[row.name]["runs"].append(
                {
                    "seconds": round(total, 3),
                    "segments_per_s": round(len(names) / total, 2),
                    "first_ms": round(per[0] * 1000, 1),
                    "median_ms": round(statistics.median(per) * 1000, 1),
                    "peak_rss_mb": round(rss / 1024, 1),
                    "stored_mb": round(stored / 2**20, 1),
                    "stderr": sorted(notes)[:3],
                }
            )
            log(
                f"  run {r + 1}: {row.name:56s} {len(names) / total:6.2f} seg/s  "
                f"(median {statistics.median(per) * 1000:5.0f} ms, first {per[0] * 1000:5.0f} ms, "
                f"rss {rss / 1024:5.1f} MB)"
            )
            for note in sorted(notes)[:2]:
                log(f"      stderr: {note[:160]}")
    for res in results.values():
        rates = [x["segments_per_s"] for x in res["runs"]]
        best = max(res["runs"], key=lambda x: x["segments_per_s"])
        res.update(
            {
                "segments_per_s_best": best["segments_per_s"],
                "segments_per_s_median": round(statistics.median(rates), 2),
                "per_segment_ms_best_run": best["median_ms"],
                "first_push_ms_best_run": best["first_ms"],
                "peak_rss_mb": max(x["peak_rss_mb"] for x in res["runs"]),
                "stored_mb": best["stored_mb"],
            }
        )
    return results


# --- 2: base backup ------------------------------------------------------------------------------------------
def setup_primary(w: World) -> tuple[LocalCluster, Path, Path, dict[str, Any]]:
    pgb = _bench_postgres()
    conf = {
        **pgb.SERVER_CONF,
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "/bin/true",  # the generated data's WAL is not what is measured
    }
    log(f"base backup: generating {w.args.size_mb} MB on PostgreSQL {w.binaries.major} ({w.binaries.bindir})")
    primary = w.new_cluster("primary", conf)
    srv = pgb.Server(w.binaries.major, primary, w.pgpass, w.binaries, primary.data_dir.parent)
    shape = pgb.generate(srv, w.args.size_mb, log)
    # The repositories, then real archiving into both, and durable settings (fsync on) from here on: the
    # restored servers inherit them, and PostgreSQL then syncs the laid-out data directory at start for both.
    d = w.user.mkdir(w.home / "main", 0o755)
    sv_cfg = w.sv_config(d / "seedvault.toml", f"file://{d / 'sv-repo'}", d / "sv-state")
    run(w.sv(sv_cfg, "init"), w.sv_env(), what="seedvault init", user=w.user)
    pgbr_cfg = w.pgbr_config(d / "pgbackrest.conf", d / "pgbr-repo", primary.data_dir, cluster=primary)
    # One server feeds both tools' backups, so its archive_command pushes to both. seedvault derives its
    # restore_command and read-ahead wal-daemon from archive_command (it would mangle a combined
    # "pgbackrest archive-push %p && seedvault wal-push %p"), so the command it sees is its own, run
    # through a tiny sh wrapper that, for wal-push only, first runs pgbackrest archive-push, then execs
    # seedvault (one fork+exec of sh more per call, ~2 ms, for every command alike).
    both = d / "seedvault-and-pgbackrest"
    both.write_text(
        "#!/bin/sh\n"
        "# bench/wal.py: archive_command feeds pgBackRest too; every other use is plain seedvault\n"
        'case " $* " in\n'
        f'  *" wal-push "*) eval "last=\\${{$#}}"; pgbackrest --config={pgbr_cfg} --stanza={STANZA} archive-push '
        '"$last" || exit $? ;;\n'
        "esac\n"
        f'exec {w.exe} "$@"\n'
    )
    both.chmod(0o755)
    conf.pop("fsync")
    conf["archive_command"] = f"{both} --config {sv_cfg} wal-push %p"
    primary.configure(extra_conf=conf)
    with w.connect(primary.port) as conn:
        conn.execute("SELECT pg_reload_conf()")
    run(w.pgbr(pgbr_cfg, "stanza-create"), w.base_env(), what="pgbackrest stanza-create", user=w.user)
    with w.connect(primary.port) as conn:
        conn.execute("CHECKPOINT")
    wait_archived(w, primary)
    return primary, sv_cfg, pgbr_cfg, shape


def wait_archived(w: World, cluster: LocalCluster, timeout: float = 300) -> str:
    with w.connect(cluster.port) as conn:
        seg = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, failed = conn.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            if failed:
                tail = cluster.log_file.read_text(errors="replace").splitlines()[-6:]
                raise BenchError("archive_command failed on the primary: " + " | ".join(tail))
            if done and done >= seg:
                return seg
            time.sleep(0.2)
    raise BenchError(f"segment {seg} not archived within {timeout:.0f} s")


def summarize(samples: list[Timing], extra: list[dict] | None = None) -> dict[str, Any]:
    secs = [t.seconds for t in samples]
    best = min(range(len(samples)), key=lambda i: secs[i])
    out: dict[str, Any] = {
        "best_s": round(secs[best], 2),
        "median_s": round(statistics.median(secs), 2),
        "all_s": [round(s, 2) for s in secs],
        "cpu_s_best_run": round(samples[best].cpu, 1),
        "peak_rss_mb": round(max(t.maxrss_kb for t in samples) / 1024, 1),
    }
    if extra:
        out.update(extra[best])
    return out


def bench_base(w: World, primary: LocalCluster, sv_cfg: Path, pgbr_cfg: Path) -> dict[str, Any]:
    bb_dir = w.user.mkdir(w.home / "basebackup", 0o755)
    dsn = f"postgresql://postgres@{HOST}:{primary.port}/postgres"
    samples: dict[str, list[Timing]] = {PGBB: [], SV_BASE: [], PGBR_FULL: []}
    extras: dict[str, list[dict]] = {k: [] for k in samples}
    names = list(samples)
    runs = w.args.runs
    for r in range(runs):
        # The rotation ends with [pg_basebackup, seedvault, pgbackrest]: the two backups PITR starts from are
        # taken one after the other (seedvault's replays the pgbackrest backup's bit of WAL too).
        k = (r - (runs - 1)) % len(names)
        for name in names[k:] + names[:k]:
            if name == PGBB:
                out = bb_dir / f"run-{r}"
                t = run(
                    [w.tool("pg_basebackup"), "-Ft", "-D", out, "-c", "fast", "--no-password"],
                    w.pg_env(primary.port),
                    what=name,
                    user=w.user,
                )
                extras[name].append({"stored_mb": round(tree_size(out) / 2**20, 1)})
                shutil.rmtree(out)
            elif name == SV_BASE:
                t = run(
                    w.sv(sv_cfg, "backup", "postgres-base", "--dsn", dsn, "--json"),
                    w.sv_env(),
                    what=name,
                    user=w.user,
                    capture=True,
                )
                body = json.loads(t.stdout)
                extras[name].append(
                    {
                        "id": body.get("id"),
                        "seconds": body.get("seconds"),
                        "stored_mb": round(int(body.get("stored_size") or 0) / 2**20, 1),
                        "raw_mb": round(int(body.get("raw_size") or body["source"].get("raw_size") or 0) / 2**20, 1),
                    }
                )
            else:
                before = tree_size(Path(_conf_value(pgbr_cfg, "repo1-path")) / "backup")
                t = run(w.pgbr(pgbr_cfg, "backup", "--type=full"), w.base_env(), what=name, user=w.user)
                after = tree_size(Path(_conf_value(pgbr_cfg, "repo1-path")) / "backup")
                extras[name].append({"stored_mb": round((after - before) / 2**20, 1)})
            samples[name].append(t)
            log(f"  run {r + 1}: {name:44s} {t.seconds:7.1f} s  (rss {t.maxrss_kb / 1024:6.1f} MB)")
    return {name: summarize(samples[name], extras[name]) for name in names}


def _conf_value(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise KeyError(key)


# --- 3: PITR -------------------------------------------------------------------------------------------------
def wait_promoted(w: World, port: int, timeout: float = 3600) -> None:
    """Until the server accepts a connection and is out of recovery (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(
                host=HOST,
                port=port,
                dbname="postgres",
                user="postgres",
                passfile=str(w.pgpass),
                autocommit=True,
                connect_timeout=2,
            ) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.Error:
            pass
        time.sleep(0.1)
    raise BenchError(f"the restored server on port {port} was not promoted within {timeout:.0f} s")


def check_marker(w: World, port: int, marker: str, what: str) -> None:
    with w.connect(port, "benchdb") as conn:
        got = conn.execute("SELECT count(*) FROM bench_marker WHERE token = %s", (marker,)).fetchone()[0]
    if got != 1:
        raise BenchError(f"{what}: the restored server lacks the marker row written before the last WAL switch")


def bench_pitr(w: World, primary: LocalCluster, sv_cfg: Path, pgbr_cfg: Path) -> dict[str, Any]:
    replay = pgbench_load(w, primary.port, w.args.replay_mb << 20, "WAL to replay")
    marker = secrets.token_hex(8)
    with w.connect(primary.port, "benchdb") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_marker (token text)")
        conn.execute("INSERT INTO bench_marker VALUES (%s)", (marker,))
    last = wait_archived(w, primary)
    base = w.user.mkdir(w.home / "restores", 0o755)
    samples: dict[str, list[Timing]] = {SV_PITR: [], PGBR_RESTORE: []}
    extras: dict[str, list[dict]] = {k: [] for k in samples}
    names = list(samples)
    for r in range(w.args.runs):
        for name in names[r % 2 :] + names[: r % 2]:
            parent = w.user.mkdir(base / f"{'sv' if name == SV_PITR else 'pgbr'}-{r}", 0o755)
            data = w.user.mkdir(parent / "data", 0o700)  # both get an existing, empty directory
            cluster = LocalCluster(data, port=free_loopback_port(), binaries=w.binaries, run_as=w.user.name)
            w.clusters.append(cluster)
            try:
                if name == SV_PITR:
                    t0 = time.perf_counter()
                    # As root with this interpreter, as an operator (and the tests) run it: under Debian 12's
                    # /usr/bin/python3 (3.11.2) the restore fails (tarfile's extraction filter needs 3.11.4+).
                    t = run(
                        [
                            sys.executable,
                            "-m",
                            "seedvault.cli.app",
                            "--config",
                            sv_cfg,
                            "restore",
                            "postgres-pitr",
                            "--data-dir",
                            data,
                            "--latest",
                            "--timeline",
                            "1",  # every run replays the same timeline-1 WAL (earlier runs made timelines 2..)
                            "--archive-mode",
                            "off",
                            "--port",
                            cluster.port,
                            "--json",
                        ],
                        {**w.sv_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                        what=name,
                        capture=True,
                    )
                    wait_promoted(w, cluster.port)
                    t.seconds = time.perf_counter() - t0
                    rep = json.loads(t.stdout)
                    extras[name].append(
                        {"seconds": rep.get("seconds"), "read_ahead": rep.get("read_ahead"), "lsn": rep.get("lsn")}
                    )
                else:
                    t0 = time.perf_counter()
                    t = run(
                        w.pgbr(pgbr_cfg, "restore", f"--pg1-path={data}", "--archive-mode=off"),
                        w.base_env(),
                        what=name,
                        user=w.user,
                    )
                    restored = time.perf_counter() - t0
                    cluster.start(timeout=3600)
                    wait_promoted(w, cluster.port)
                    t.seconds = time.perf_counter() - t0
                    extras[name].append(
                        {
                            "seconds": {
                                "restore": round(restored, 2),
                                "start_to_promoted": round(t.seconds - restored, 2),
                            }
                        }
                    )
                check_marker(w, cluster.port, marker, name)
                samples[name].append(t)
                log(f"  run {r + 1}: {name:44s} {t.seconds:7.1f} s  (rss {t.maxrss_kb / 1024:6.1f} MB)")
            finally:
                with contextlib.suppress(Exception):
                    cluster.stop("immediate", timeout=60)
                w.clusters.remove(cluster)
                shutil.rmtree(parent, ignore_errors=True)
    out = {name: summarize(samples[name], extras[name]) for name in names}
    return {"replayed_wal": {**replay, "last_segment": last}, "commands": out}


# --- report --------------------------------------------------------------------------------------------------
def ratios_and_goals(res: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    ratios: dict[str, float] = {}
    goals: dict[str, dict[str, Any]] = {}
    push = res.get("wal_push", {})

    def rate(name: str, stat: str = "segments_per_s_best") -> float:
        return push[name][stat]

    def goal(name: str, value: float, limit: float, *, at_least: bool) -> None:
        goals[name] = {"value": value, "limit": limit, "met": value >= limit if at_least else value <= limit}

    if SV_FILE in push and PGBR_SYNC in push:
        ratios["wal-push seg/s: seedvault file:// / pgbackrest sync"] = round(rate(SV_FILE) / rate(PGBR_SYNC), 3)
        ratios["wal-push seg/s (medians): seedvault file:// / pgbackrest sync"] = round(
            rate(SV_FILE, "segments_per_s_median") / rate(PGBR_SYNC, "segments_per_s_median"), 3
        )
        goal(
            "wal-push, direct (no daemon) >= 1.0x pgbackrest sync",
            ratios["wal-push seg/s: seedvault file:// / pgbackrest sync"],
            GOALS["wal_push_ratio_min"],
            at_least=True,
        )
    if SV_AUTO in push and PGBR_SYNC in push:
        auto = round(rate(SV_AUTO) / rate(PGBR_SYNC), 3)
        ratios["wal-push seg/s: seedvault wal_daemon=auto / pgbackrest sync"] = auto
        ratios["wal-push seg/s (medians): seedvault wal_daemon=auto / pgbackrest sync"] = round(
            rate(SV_AUTO, "segments_per_s_median") / rate(PGBR_SYNC, "segments_per_s_median"), 3
        )
        ratios["wal-push seg/s: seedvault wal_daemon=auto / pgbackrest async"] = round(
            rate(SV_AUTO) / rate(PGBR_ASYNC), 3
        )
        goal(
            "wal-push, wal_daemon=auto (RUNBOOK 17.5) >= 1.0x pgbackrest sync",
            auto,
            GOALS["wal_push_ratio_min"],
            at_least=True,
        )
    if SV_DAEMON in push:
        ratios["wal-push seg/s: seedvault via daemon / pgbackrest sync"] = round(rate(SV_DAEMON) / rate(PGBR_SYNC), 3)
        ratios["wal-push seg/s: seedvault via daemon / pgbackrest async"] = round(rate(SV_DAEMON) / rate(PGBR_ASYNC), 3)
    if SV_S3_AUTO in push and BARMAN in push:
        ratios["wal-push seg/s: seedvault wal_daemon=auto S3 / barman-cloud S3"] = round(
            rate(SV_S3_AUTO) / rate(BARMAN), 3
        )
        ratios["wal-push seg/s: seedvault wal_daemon=auto S3 / seedvault S3 direct"] = round(
            rate(SV_S3_AUTO) / rate(SV_S3), 3
        )
    if SV_S3 in push and BARMAN in push:
        ratios["wal-push seg/s: seedvault S3 / barman-cloud S3"] = round(rate(SV_S3) / rate(BARMAN), 3)
        ratios["wal-push seg/s (medians): seedvault S3 / barman-cloud S3"] = round(
            rate(SV_S3, "segments_per_s_median") / rate(BARMAN, "segments_per_s_median"), 3
        )
    base = res.get("base_backup", {})
    if base:
        ratios["base backup time: seedvault / pgbackrest"] = round(
            base[SV_BASE]["best_s"] / base[PGBR_FULL]["best_s"], 3
        )
        ratios["base backup time (medians): seedvault / pgbackrest"] = round(
            base[SV_BASE]["median_s"] / base[PGBR_FULL]["median_s"], 3
        )
        ratios["base backup time: seedvault / pg_basebackup"] = round(base[SV_BASE]["best_s"] / base[PGBB]["best_s"], 3)
        ratios["base backup time: pgbackrest / pg_basebackup"] = round(
            base[PGBR_FULL]["best_s"] / base[PGBB]["best_s"], 3
        )
        v = ratios["base backup time: seedvault / pgbackrest"]
        goal("base backup <= 1.0x pgbackrest (time)", v, GOALS["base_backup_ratio_max"], at_least=False)
    pitr = res.get("pitr", {}).get("commands", {})
    if pitr:
        ratios["PITR time: seedvault / pgbackrest"] = round(pitr[SV_PITR]["best_s"] / pitr[PGBR_RESTORE]["best_s"], 3)
        ratios["PITR time (medians): seedvault / pgbackrest"] = round(
            pitr[SV_PITR]["median_s"] / pitr[PGBR_RESTORE]["median_s"], 3
        )
        v = ratios["PITR time: seedvault / pgbackrest"]
        goal("PITR <= 1.2x pgbackrest (time)", v, GOALS["pitr_ratio_max"], at_least=False)
    return ratios, goals


def print_report(res: dict[str, Any]) -> None:
    print(
        f"\nPostgreSQL {res['pg_version']} ({res['pg_bindir']}); {res['tools']['pgbackrest']}; "
        f"{res['tools'].get('barman', 'barman: not run')}; {res['cores']} cores; best of {res['runs']} runs "
        "(median in brackets)"
    )
    push = res.get("wal_push")
    if push:
        print(f"\n1. wal-push, {res['wal_segments']['count']} segments of 16 MB, one process each, sequential:")
        for name, p in push.items():
            print(
                f"  {name:56s} {p['segments_per_s_best']:6.2f} seg/s [{p['segments_per_s_median']:6.2f}]  "
                f"{p['per_segment_ms_best_run']:6.0f} ms/seg (first {p['first_push_ms_best_run']:5.0f} ms)  "
                f"rss {p['peak_rss_mb']:6.1f} MB  stored {p['stored_mb']:6.1f} MB"
            )
        for name in res.get("skipped", []):
            print(f"  {name:56s} skipped")
    for title, key in (("2. base backup", "base_backup"), ("3. PITR", "pitr")):
        block = res.get(key)
        if not block:
            continue
        cmds = block.get("commands", block)
        extra = ""
        if key == "base_backup":
            extra = f", database {res['db']['db_size_mb']:.0f} MB"
        else:
            rw = block["replayed_wal"]
            extra = f", then {rw['wal_mb']:.0f} MB of WAL replayed"
        print(f"\n{title}{extra}:")
        for name, c in cmds.items():
            rss = f"peak rss {c['peak_rss_mb']:6.1f} MB"
            stored = f"  stored {c['stored_mb']:7.1f} MB" if "stored_mb" in c else ""
            print(
                f"  {name:44s} {c['best_s']:8.1f} s [{c['median_s']:7.1f}]  cpu {c['cpu_s_best_run']:6.1f} s"
                f"  {rss}{stored}"
            )
            if c.get("seconds"):
                print(f"  {'':44s} seconds {c['seconds']}")
            if c.get("read_ahead"):
                print(f"  {'':44s} read-ahead: {c['read_ahead']}")
    print()
    for k, v in res["ratios"].items():
        print(f"  ratio {k:64s} {v:6.3f}")
    for k, g in res["goals"].items():
        print(f"  goal {k:40s} {g['value']:7.3f}  {'met' if g['met'] else 'NOT MET'}")


# --- main ----------------------------------------------------------------------------------------------------
def probe_daemon(w: World) -> bool:
    proc = subprocess.run(
        [str(w.exe), "wal-daemon", "--help"],
        env=w.sv_env(),
        capture_output=True,
        cwd="/",
        **w.user.popen_kwargs(),
    )
    return proc.returncode == 0


def _venv_python(exe: Path) -> str:
    """The interpreter of the wrapper (its #! line, without the -I)."""
    return exe.read_text().splitlines()[0][2:].split()[0]


def build_world(args: argparse.Namespace, work: Path) -> World:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.pgvenv import install_command

    user = User.of(default_run_as())
    home = user.mkdir(work / "u", 0o755)
    secrets_dir = user.mkdir(home / "secrets", 0o700)
    _rss_dir[:] = [user.mkdir(home / "rss", 0o700)]
    log(f"building the {user.name}-runnable seedvault command (tests/fixtures/pgvenv.py)")
    exe = install_command(work)
    # An installed package has its bytecode compiled; the fixture's fresh source copy has none (and the
    # wrapper writes none), which would add ~50 ms of compiling to every seedvault process.
    subprocess.run(
        [f"{_venv_python(exe)}", "-m", "compileall", "-q", str(work / "pysrc")], check=True, stdout=subprocess.DEVNULL
    )
    subprocess.run(["chmod", "-R", "a+rX", str(work / "pysrc")], check=True)
    password = "bench-" + secrets.token_urlsafe(24)
    w = World(
        args=args,
        work=work,
        home=home,
        user=user,
        binaries=PgBinaries(Path(args.pg_bin), 15, "bench --pg-bin"),
        exe=exe,
        key=user.private_file(secrets_dir / "master.key", generate_raw_key() + "\n"),
        pgpass=user.private_file(secrets_dir / "pgpass", f"{HOST}:*:*:postgres:{password}\n"),
        password=password,
        pgbr_pass=secrets.token_urlsafe(32),
    )
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="database size for base backup/PITR (default 1024)")
    ap.add_argument("--segments", type=int, default=48, help="16 MB WAL segments pushed per row and run (default 48)")
    ap.add_argument("--replay-mb", type=int, default=256, help="WAL written after the backups, replayed by PITR")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-s3", action="store_true", help="no moto endpoint: skip the S3 rows")
    ap.add_argument("--only", choices=("push", "base"), help="only the wal-push part, or only base backup + PITR")
    ap.add_argument("--barman-compression", choices=("gzip", "bzip2", "snappy", "none"), default="gzip")
    ap.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin", help="PostgreSQL 15 binaries (Debian's)")
    # Disk, not tmpfs: both sides' repositories and restores live here; the server user must traverse it.
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the bench directory (servers are stopped anyway)")
    ap.add_argument("--install-tools", action="store_true", help="apt-get install pgbackrest barman-cli-cloud")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.runs < 1 or args.size_mb < 1 or args.segments < 2 or args.replay_mb < 16:
        raise SystemExit("--runs and --size-mb must be positive, --segments >= 2, --replay-mb >= 16")
    if os.geteuid() != 0:
        raise SystemExit("run the bench as root: it runs every tool as the PostgreSQL server's OS user")
    check_tools(args)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="seedvault-walbench-", dir=args.dir))
    work.chmod(0o755)
    res: dict[str, Any] = {"cores": os.cpu_count(), "runs": args.runs}
    w: World | None = None
    try:
        w = build_world(args, work)
        res["pg_bindir"] = str(w.binaries.bindir)
        res["pg_version"] = tool_version([w.tool("postgres"), "--version"]).split("(PostgreSQL)")[-1].strip()
        res["tools"] = {"pgbackrest": tool_version(["pgbackrest", "version"])}
        w.daemon_available = probe_daemon(w)
        res["skipped"] = [] if w.daemon_available else [f"{SV_DAEMON} (no `seedvault wal-daemon` command)"]
        if not w.daemon_available:
            log("seedvault wal-daemon: not available, its row is skipped")
        if args.only != "base":
            if args.skip_s3:
                res["skipped"].append("S3 rows (--skip-s3)")
            else:
                start_moto(w)
                res["tools"]["barman"] = tool_version(["barman-cloud-wal-archive", "--version"])
            staging, names, shape = stage_segments(w, args.segments)
            res["wal_segments"] = {"count": len(names), "first": names[0], "last": names[-1], **shape}
            res["wal_segments"].pop("segments")
            log(f"wal-push: {len(names)} segments {names[0]}..{names[-1]}, {args.runs} runs")
            res["wal_push"] = bench_push(w, staging, names)
            for name, notes in w.notes.items():
                res["wal_push"][name]["notes"] = notes
        if args.only != "push":
            primary, sv_cfg, pgbr_cfg, res["db"] = setup_primary(w)
            res["base_backup"] = bench_base(w, primary, sv_cfg, pgbr_cfg)
            log(f"PITR: {args.replay_mb} MB of WAL after the backups, then {args.runs} runs")
            res["pitr"] = bench_pitr(w, primary, sv_cfg, pgbr_cfg)
    except KeyboardInterrupt:
        kill_current()
        log("interrupted; cleaning up")
        raise SystemExit(130) from None
    except (BenchError, SeedvaultError, psycopg.Error, OSError, subprocess.CalledProcessError) as exc:
        kill_current()
        raise SystemExit(f"bench failed: {type(exc).__name__}: {exc}") from None
    finally:
        _cleanup(w, work, args.keep)
    res["ratios"], res["goals"] = ratios_and_goals(res)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)


def _leftovers(work: Path) -> list[int]:
    """Processes still running from the bench directory (e.g. a daemon a killed command had started)."""
    needle = str(work).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
    return pids


def _cleanup(w: World | None, work: Path, keep: bool) -> None:
    kill_current()
    if w is not None:
        for cluster in list(w.clusters):
            with contextlib.suppress(Exception):
                cluster.stop("immediate", timeout=60)
        for fn in reversed(w.cleanups):
            with contextlib.suppress(Exception):
                fn()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _leftovers(work)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids:
            time.sleep(2)
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
