"""The archiver daemon and its stdlib client over a real unix socket, with local storage and synthetic
segments: served pushes, look-ahead of ``.ready`` segments, read-ahead fetches, verdicts vs fallbacks.

The real-server behaviour (PostgreSQL's archiver, kill -9 of the daemon mid-push) is in
tests/integration/test_wal_daemon.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedvault.repository import Repository
from seedvault.sources.postgres.wal import client
from seedvault.sources.postgres.wal.daemon import WalDaemon
from seedvault.sources.postgres.wal.store import WalStore
from tests.unit.test_wal_store import SYSID, make_wal_repo, segment_bytes, write_seg


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_wal_repo(tmp_path)


@pytest.fixture
def pgdata(tmp_path: Path) -> Path:
    d = tmp_path / "pgdata"
    (d / "global").mkdir(parents=True)
    (d / "pg_wal" / "archive_status").mkdir(parents=True)
    (d / "global" / "pg_control").write_bytes(SYSID.to_bytes(8, "little") + b"\0" * 8184)
    return d


@pytest.fixture
def daemon(repo: Repository, pgdata: Path, tmp_path: Path) -> Iterator[tuple[WalDaemon, str, list[str]]]:
    sock = str(tmp_path / "wal.sock")
    lines: list[str] = []
    d = WalDaemon(WalStore(repo, SYSID), sock, pgdata=pgdata, workers=3, emit=lines.append)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    yield d, sock, lines
    d.stop()
    t.join(timeout=30)


def _push_argv(sock: str, pgdata: Path, name: str) -> list[str]:
    return ["wal-push", "--pgdata", str(pgdata), "--socket", sock, f"pg_wal/{name}"]


def test_push_is_served_and_durable_then_identical_repush_is_a_duplicate(daemon, pgdata, repo, tmp_path) -> None:
    d, sock, lines = daemon
    seg = write_seg(pgdata / "pg_wal", 1, 5)
    assert client.try_push(_push_argv(sock, pgdata, seg.name)) == 0
    # Durable before the answer: a fresh store (another process, in effect) reads it back identical.
    out = tmp_path / "back"
    WalStore(repo, SYSID).fetch(seg.name, out)
    assert out.read_bytes() == seg.read_bytes()
    assert client.try_push(_push_argv(sock, pgdata, seg.name)) == 0
    assert any("duplicate" in line for line in lines)


def test_different_content_is_a_verdict_not_a_fallback(daemon, pgdata, repo, capsys) -> None:
    _, sock, _ = daemon
    seg = write_seg(pgdata / "pg_wal", 1, 6)
    assert client.try_push(_push_argv(sock, pgdata, seg.name)) == 0
    seg.write_bytes(segment_bytes(1, 6))  # new random body under the same name
    assert client.try_push(_push_argv(sock, pgdata, seg.name)) == 16
    assert "different content" in capsys.readouterr().err


def test_ready_segments_are_pushed_ahead_and_served_from_that_work(daemon, pgdata, repo) -> None:
    d, sock, lines = daemon
    segs = [write_seg(pgdata / "pg_wal", 1, n) for n in range(10, 14)]
    for s in segs:
        (pgdata / "pg_wal" / "archive_status" / f"{s.name}.ready").touch()
    assert client.try_push(_push_argv(sock, pgdata, segs[0].name)) == 0
    deadline = time.monotonic() + 30
    while sum("look-ahead" in line for line in lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum("look-ahead" in line for line in lines) == 3  # the other three .ready ones, in parallel
    for s in segs[1:]:
        assert client.try_push(_push_argv(sock, pgdata, s.name)) == 0
    assert d.stats.served_ahead == 3 and d.stats.pushed == 4  # nothing pushed twice
    assert all((pgdata / "pg_wal" / "archive_status" / f"{s.name}.ready").exists() for s in segs)  # PG's job


def test_fetch_reads_ahead_and_reports_missing_quietly(daemon, pgdata, repo, tmp_path, capsys) -> None:
    d, sock, _ = daemon
    store = WalStore(repo, SYSID)
    src = tmp_path / "src"
    src.mkdir()
    segs = [write_seg(src, 2, n) for n in range(20, 25)]
    for s in segs:
        store.push(s)

    def fetch(name: str) -> int | None:
        return client.try_fetch(["wal-fetch", "--pgdata", str(pgdata), "--socket", sock, name, "pg_wal/RECOVERYXLOG"])

    for s in segs:
        assert fetch(s.name) == 0
        assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == s.read_bytes()
    assert d.stats.prefetch_hits >= 3
    assert fetch("000000020000000000000030") == 1 and capsys.readouterr().err == ""


def test_fetch_of_a_corrupted_segment_is_fatal(daemon, pgdata, repo, tmp_path, capsys) -> None:
    _, sock, _ = daemon
    store = WalStore(repo, SYSID)
    src = tmp_path / "src"
    src.mkdir()
    res = store.push(write_seg(src, 1, 40))
    path = Path(repo.storage.root) / res.key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    code = client.try_fetch(["wal-fetch", "--pgdata", str(pgdata), "--socket", sock, res.name, "pg_wal/RECOVERYXLOG"])
    assert code == 126
    err = capsys.readouterr().err
    assert "FATAL" in err and res.name in err
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_no_daemon_or_other_system_falls_back(daemon, pgdata, tmp_path, capsys) -> None:
    d, sock, _ = daemon
    seg = write_seg(pgdata / "pg_wal", 1, 7)
    assert client.try_push(_push_argv(str(tmp_path / "nothing.sock"), pgdata, seg.name)) is None
    assert client.try_push(["wal-push", "--system-id", "42", "--socket", sock, str(seg)]) is None
    assert "daemon serves system" in capsys.readouterr().err
    # No socket configured at all: not even a note.
    env_before = os.environ.pop(client.SOCKET_ENV, None)
    try:
        assert client.try_push(["wal-push", "--pgdata", str(pgdata), f"pg_wal/{seg.name}"]) is None
    finally:
        if env_before is not None:
            os.environ[client.SOCKET_ENV] = env_before


def test_a_second_daemon_on_the_same_socket_is_refused(daemon, repo, pgdata) -> None:
    from seedvault.errors import ConfigError

    _, sock, _ = daemon
    with pytest.raises(ConfigError, match="already serving"):
        WalDaemon(WalStore(repo, SYSID), sock, pgdata=pgdata).bind()


def test_socket_path_from_config_file(tmp_path) -> None:
    cfg = tmp_path / "sv.toml"
    cfg.write_text('repository = "file:///x"\nwal_socket = "/run/seedvault/wal.sock"\n')
    assert client.socket_path({"--config": str(cfg)}, env={}) == "/run/seedvault/wal.sock"
    assert client.socket_path({}, env={"SEEDVAULT_CONFIG": str(cfg)}) == "/run/seedvault/wal.sock"
    assert client.socket_path({"--socket": "/a"}, env={"SEEDVAULT_WAL_SOCKET": "/b"}) == "/a"
    assert client.socket_path({}, env={}) is None


def _wal_push_imports(cfg: Path, pgdata: Path, seg: Path, watched: tuple[str, ...]) -> str:
    """Run the console script's wal-push in a fresh interpreter: '<exit code> [watched modules it loaded]'."""
    import subprocess
    import sys

    probe = (
        "import sys, runpy\n"
        "watched = tuple(sys.argv[3].split(','))\n"
        "sys.argv = ['seedvault', '--config', sys.argv[1], 'wal-push', sys.argv[2]]\n"
        "try:\n    runpy.run_module('seedvault.cli.entry', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print(code, sorted(m for m in sys.modules if m in watched or m.split('.')[0] in watched))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(cfg), f"pg_wal/{seg.name}", ",".join(watched)],
        cwd=pgdata,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": os.pathsep.join(sys.path), "PATH": os.environ.get("PATH", "")},
    )
    return out.stdout.strip() or out.stderr


def test_console_script_wal_paths_load_neither_prefect_nor_typer(repo, pgdata: Path, tmp_path: Path) -> None:
    """archive_command's process stays small: daemon client and direct path import no framework."""
    cfg = tmp_path / "sv.toml"  # the repo fixture's repository and key
    cfg.write_text(f'repository = "file://{tmp_path / "repo"}"\nkey_file = "{tmp_path / "master.key"}"\n')
    seg = write_seg(pgdata / "pg_wal", 1, 3)
    assert _wal_push_imports(cfg, pgdata, seg, ("prefect", "typer", "click", "rich")) == "0 []"


def test_daemon_served_push_imports_no_json_re_or_toml_parser(daemon, pgdata: Path, tmp_path: Path) -> None:
    """The common path of a busy server: the console script hands the file over with a lean import set."""
    _, sock, _ = daemon
    cfg = tmp_path / "sv.toml"
    cfg.write_text(f'repository = "file://{tmp_path / "repo"}"\nwal_socket = "{sock}"  # the daemon\n')
    seg = write_seg(pgdata / "pg_wal", 1, 44)
    heavy = (
        "json",
        "re",
        "tomllib",
        "seedvault.sources.postgres.wal.direct",
        "seedvault.sources.postgres.wal.store",
        "cryptography",
        "zstandard",
    )
    assert _wal_push_imports(cfg, pgdata, seg, heavy) == "0 []"


def test_a_version_1_client_is_still_served(daemon, pgdata: Path) -> None:
    """A daemon outlives the client version that started it; and the other way round."""
    import array
    import json
    import socket

    _, sock, _ = daemon
    seg = write_seg(pgdata / "pg_wal", 1, 45)
    fd = os.open(seg, os.O_RDONLY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock)
        msg = json.dumps({"v": 1, "op": "push", "name": seg.name, "system_id": str(SYSID)}) + "\n"
        conn.sendmsg([msg.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        reply = json.loads(conn.makefile("rb").readline())
    finally:
        conn.close()
        os.close(fd)
    assert reply["ok"] is True and reply["result"] == "stored"


@pytest.mark.parametrize(
    "reply, expect",
    [
        (b"OK\tstored\t\n", {"ok": True, "result": "stored", "note": None}),
        (b"OK\tfetched\tserved partial\n", {"ok": True, "result": "fetched", "note": "served partial"}),
        (b"ERR\t16\talready archived with different content\n", {"ok": False, "exit": 16}),
        (b"MISSING\n", {"ok": False, "missing": True}),
        (b"OK\tmaybe\t\n", None),  # not a result the client knows: never read as success
        (b"OK\n", None),
        (b"ERR\tx\ty\n", None),
        (b'{"ok": true}\n', None),
        (b"FALLBACK\tdaemon serves system 1\n", None),
        (b"\xff\n", None),
    ],
)
def test_reply_decoding_is_strict(reply: bytes, expect) -> None:
    if expect is None:
        with pytest.raises(client.Fallback):
            client.decode_reply(reply)
    else:
        got = client.decode_reply(reply)
        assert {k: got[k] for k in expect} == expect


def test_requests_round_trip_and_refuse_tabs() -> None:
    line = client.encode_request("fetch", "7", "000000010000000000000001", "/data/pg wal/RECOVERYXLOG")
    assert client.decode_request(line) == {
        "v": 2, "op": "fetch", "system_id": "7", "name": "000000010000000000000001",
        "dest": "/data/pg wal/RECOVERYXLOG",
    }  # fmt: skip
    with pytest.raises(client.Fallback):
        client.encode_request("fetch", "7", "x", "/a\tb")
    assert client.decode_request(b"SVWAL2\tpush\t7\n") is None


FLAT_SAMPLES = [
    'repository = "file:///x"\nwal_socket = "/run/a.sock"\n',
    "wal_socket = '/run/b.sock' # literal\nwal_daemon = \"auto\"\nwal_daemon_idle = 120\n",
    "# only comments\n\n   \n",
    'key_file = "/k"\ns3_part_size = 16777216\nwal_daemon = "off"  # trailing\n',
    '[seedvault]\nwal_socket = "/run/c.sock"\n',
    'wal_socket = "/run/\\u0064.sock"\n',
    'wal_socket = """/run/d.sock"""\n',
    'tags = [\n  "a",\n]\nwal_socket = "/run/e.sock"\n',
    'tags = ["a", "b"]\nwal_socket = "/run/f.sock"\n',
    'wal_socket = "/run/g.sock"\nwal_socket = "/run/h.sock"\n',
    '"wal_socket" = "/run/i.sock"\n',
    'wal.socket = "/run/j.sock"\n',
    "wal_daemon_idle = 0x10\n",
    'wal_socket = "/run/k.sock" junk\n',
]


@pytest.mark.parametrize("text", FLAT_SAMPLES)
def test_flat_config_scan_never_disagrees_with_tomllib(text: str) -> None:
    import tomllib

    keys = client.DAEMON_KEYS
    scanned = client.scan_flat_toml(text.encode(), keys)
    if scanned is None:
        return  # the client then uses tomllib itself
    data = tomllib.loads(text)
    section = data.get("seedvault", data)
    assert scanned == {k: section[k] for k in keys if k in section}
