"""``seedvault wal-push %p`` (archive_command), ``wal-fetch %f %p`` (restore_command), ``wal-daemon``
(the long-running archiver) and ``wal-receive`` (streaming mode).

PostgreSQL's contracts decide wal-push's and wal-fetch's exit codes; they are implemented once, in
:mod:`seedvault.sources.postgres.wal.direct`, which the console script also calls without loading typer (see
:mod:`seedvault.cli.entry`). None of these commands imports Prefect. The system id comes from
``global/pg_control`` of the data directory (the working directory when PostgreSQL runs the command), so
a push can never be filed under another cluster.
"""

from __future__ import annotations

import os

import typer

from seedvault.cli.runtime import err, state
from seedvault.errors import ConfigError, SeedvaultError
from seedvault.sources.postgres.wal.direct import system_id_of


def register(app: typer.Typer) -> None:
    app.command("wal-push")(wal_push)
    app.command("wal-fetch")(wal_fetch)
    app.command("wal-daemon")(wal_daemon)
    app.command("wal-receive")(wal_receive)


SOCKET_HELP = "Archiver daemon socket [setting wal_socket, env SEEDVAULT_WAL_SOCKET]; direct when none answers."


def wal_push(
    ctx: typer.Context,
    path: str = typer.Argument(..., help="%p: the WAL file, relative to the data directory."),
    pgdata: str = typer.Option(None, "--pgdata", help="Data directory (default: the working directory)."),
    system_id: str = typer.Option(None, "--system-id", help="Expected system identifier (default: pg_control's)."),
    pg_major: int = typer.Option(None, "--pg-major", help="Server major version, checked against the page magic."),
    socket_path: str = typer.Option(None, "--socket", help=SOCKET_HELP),
) -> None:
    """Archive one WAL file (archive_command = 'seedvault wal-push %p'); exit 0 only once it is durable.

    When a wal-daemon answers on the configured socket it does the work (the console script asks it
    before loading this CLI); this is the direct path, used when none does.
    """
    from seedvault.sources.postgres.wal import client, direct

    st = state(ctx)
    sock = _socket(st, socket_path)
    idle = _auto(st)
    major = str(pg_major) if pg_major else None
    code = None
    if sock:
        opts = direct.global_options(st.overrides)
        start = None if idle is None else lambda: client.start_daemon(sock, opts, pgdata, idle)
        code = client.push_via(sock, path, pgdata, system_id, major, on_absent=start)
    if code is None:
        code = direct.push(st.overrides, path, pgdata=pgdata, system_id=system_id, pg_major=pg_major)
    if code:
        raise typer.Exit(code)


def wal_fetch(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="%f: the WAL file PostgreSQL asks for."),
    dest: str = typer.Argument(..., help="%p: where to put it, relative to the data directory."),
    pgdata: str = typer.Option(None, "--pgdata", help="Data directory (default: the working directory)."),
    system_id: str = typer.Option(None, "--system-id", help="System identifier (default: pg_control's)."),
    socket_path: str = typer.Option(None, "--socket", help=SOCKET_HELP),
) -> None:
    """Fetch and verify one WAL file (restore_command = 'seedvault wal-fetch %f %p')."""
    from seedvault.sources.postgres.wal import client, direct

    st = state(ctx)
    sock = _socket(st, socket_path)
    code = client.fetch_via(sock, name, dest, pgdata, system_id) if sock else None
    if code is None:
        code = direct.fetch(st.overrides, name, dest, pgdata=pgdata, system_id=system_id)
    if code:
        raise typer.Exit(code)


def _auto(st) -> int | None:
    """The idle timeout of an automatically started daemon, or None when wal_daemon is off."""
    try:
        return st.settings.wal_daemon_idle if st.settings.wal_daemon == "auto" else None
    except SeedvaultError:
        return None


def _socket(st, explicit: str | None) -> str | None:
    """The daemon socket for this call; a broken config is left to the direct path to report."""
    from seedvault.sources.postgres.wal import client

    try:
        return explicit or os.environ.get(client.SOCKET_ENV) or st.settings.wal_socket
    except SeedvaultError:
        return None


def wal_daemon(
    ctx: typer.Context,
    pgdata: str = typer.Option(None, "--pgdata", help="Data directory served (its pg_control names the system)."),
    system_id: str = typer.Option(None, "--system-id", help="System identifier (fetch-only, without --pgdata)."),
    socket_path: str = typer.Option(None, "--socket", help="Socket to serve [setting wal_socket]."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Parallel pushes/fetches."),
    lookahead: int = typer.Option(None, "--lookahead", min=0, help="Ready segments pushed ahead (default: workers)."),
    fetch_ahead: int = typer.Option(None, "--fetch-ahead", min=0, help="Segments read ahead in recovery."),
    idle_exit: int = typer.Option(0, "--idle-exit", min=0, help="Stop after this many idle seconds (0: never)."),
    quiet: bool = typer.Option(False, "--quiet", help="Report failures, starts and stops only, not every push."),
) -> None:
    """Run the archiver: warm storage connections, parallel look-ahead pushes, read-ahead for recovery.

    Run it as the PostgreSQL server's OS user (systemd unit in RUNBOOK.md), with the same settings as
    archive_command. Stops cleanly on SIGTERM, finishing the requests in flight.
    """
    import logging

    from seedvault.sources.postgres.wal.daemon import WalDaemon, serving_line
    from seedvault.sources.postgres.wal.store import WalStore

    try:
        st = state(ctx)
        path = socket_path or st.settings.wal_socket
        if not path:
            raise ConfigError("no socket: pass --socket or set wal_socket")
        if not pgdata and not system_id:
            raise ConfigError("pass --pgdata (archiving) or --system-id (fetch only)")
        sid = int(system_id) if system_id else system_id_of(pgdata)
        store = WalStore(st.repository(create=True), sid, state_dir=st.settings.wal_state_dir)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        daemon = WalDaemon(
            store,
            path,
            pgdata=pgdata,
            workers=workers,
            lookahead=lookahead,
            fetch_ahead=fetch_ahead,
            zstd_level=st.settings.zstd_level,
            emit=lambda line: err(f"seedvault wal-daemon: {line}"),
            idle_exit=idle_exit,
            verbose=not quiet,
        )
        daemon.bind()
        daemon.install_signal_handlers()
        err(serving_line(path, sid, workers))
        daemon.serve_forever()
        s = daemon.stats
        err(
            f"seedvault wal-daemon: stopped; {s.requests} requests, {s.pushed} pushed "
            f"({s.served_ahead} ahead of PostgreSQL), {s.fetched} fetched ({s.prefetch_hits} read ahead)"
        )
    except SeedvaultError as exc:
        err(f"seedvault wal-daemon: error: {exc.one_line()}")
        raise typer.Exit(exc.exit_code) from None


def wal_receive(
    ctx: typer.Context,
    dsn: str = typer.Option(..., "--dsn", help="postgresql://user@host:port/db of a REPLICATION role (no password)."),
    slot: str = typer.Option("seedvault", "--slot", help="Physical replication slot to stream from."),
    create_slot: bool = typer.Option(False, "--create-slot", help="Create the slot if it does not exist."),
    spool: str = typer.Option(None, "--spool", help="Local directory for pg_receivewal (persistent; small)."),
    synchronous: bool = typer.Option(
        False,
        "--synchronous",
        help="Flush on receipt (put the slot's name in synchronous_standby_names for zero loss).",
    ),
    partial_interval: float = typer.Option(
        10.0, "--partial-interval", min=0, help="Seconds between uploads of the segment in progress (0: on exit only)."
    ),
) -> None:
    """Streaming mode: supervise pg_receivewal on a replication slot, pushing WAL (partials too) to the store.

    Runs until SIGTERM/SIGINT; the segment in progress is pushed whenever pg_receivewal exits and on
    shutdown. Use it beside archive_command (both write the same store; identical copies are duplicates).
    """
    import logging

    from seedvault.sources.postgres.connection import PgTarget
    from seedvault.sources.postgres.wal.receive import WalReceiver, ensure_slot

    try:
        st = state(ctx)
        target = PgTarget.from_dsn(dsn)
        ensure_slot(target, slot, create=create_slot)
        base = spool or (
            os.path.join(st.settings.wal_state_dir, f"receive-{slot}") if st.settings.wal_state_dir else None
        )
        if not base:
            raise ConfigError("no spool directory: pass --spool or set wal_state_dir")
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        receiver = WalReceiver(
            st.repository(create=True),
            target,
            base,
            slot=slot,
            synchronous=synchronous,
            partial_interval=partial_interval,
            zstd_level=st.settings.zstd_level,
            emit=lambda line: err(f"seedvault wal-receive: {line}"),
        )
        receiver.install_signal_handlers()
        err(f"seedvault wal-receive: streaming system {receiver.system_id} from slot {slot} into {base}")
        receiver.run()
    except SeedvaultError as exc:
        err(f"seedvault wal-receive: error: {exc.one_line()}")
        raise typer.Exit(exc.exit_code) from None
