"""Small holes (issue 13.8): temp files on a full state dir, file modes, the passphrase's newline, labels.

* a full ``wal_state_dir`` left an empty temporary file behind on every push (archiving still worked);
* key files readable by others were used without a word, and the local driver created repository files and
  directories with the umask's 0644/0755: now a warning on stderr, and 0600/0700;
* every trailing newline of a passphrase file was dropped, where FORMAT.md section 6 says "the passphrase is
  the file's content without its trailing newline": exactly one now (and a warning when more line breaks end
  it, since older versions dropped them);
* labels with line breaks, ``../`` or 100 kB were stored: now a UsageError naming the rule, before anything
  is written.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest

from seedvault.crypto.keys import KeySource
from seedvault.errors import UsageError
from seedvault.format import layout
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.local import LocalStorage
from tests.faults.catalogued import invoke_checked
from tests.unit.test_wal_store import SYSID, make_wal_repo, write_seg


# --- a full wal_state_dir -----------------------------------------------------------------------------
class _FullDisk:
    """What os.fdopen gives on a full file system: every write fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def write(self, text) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_state_dir_leaves_no_temporary_file_and_archiving_goes_on(tmp_path, monkeypatch):
    repo = make_wal_repo(tmp_path)
    state = tmp_path / "state"
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):  # only the state dir's file system is full
        fh = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(fh) if os.readlink(f"/proc/self/fd/{fd}").startswith(str(state)) else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    for segno in (1, 2, 3):
        monkeypatch.setattr(os, "getpid", lambda segno=segno: 40_000 + segno)  # one process per push
        result = WalStore(repo, SYSID, state_dir=str(state)).push(write_seg(tmp_path, 1, segno))
        assert result.result == "stored"
    assert list(state.iterdir()) == []  # neither a cache (the disk is full) nor any temporary file
    monkeypatch.undo()
    store = WalStore(repo, SYSID, state_dir=str(state))
    store.push(write_seg(tmp_path, 1, 4))
    assert [p.name.startswith("wal-epoch-") for p in state.iterdir()] == [True]  # with room, the cache is back
    store.fetch(write_seg(tmp_path, 1, 2).name, tmp_path / "back")


# --- modes of key files and of the local repository -----------------------------------------------------
def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("seedvault: warning:")]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_used_with_a_warning(local_repo, mode):
    invoke_checked(["put", "--label", "x"], local_repo.env, input=b"x", expect=0)
    local_repo.key_file.chmod(mode)
    res = invoke_checked(["list"], local_repo.env, expect=0)
    (warning,) = _warnings(res.stderr)
    assert f"key file {local_repo.key_file} is accessible by group or others (mode {mode:04o})" in warning
    assert f"chmod 600 {local_repo.key_file}" in warning
    local_repo.key_file.chmod(0o600)
    assert _warnings(invoke_checked(["list"], local_repo.env, expect=0).stderr) == []


def test_a_passphrase_file_others_can_read_is_used_with_a_warning(tmp_path):
    pw = tmp_path / "pass"
    pw.write_text("a passphrase\n")
    pw.chmod(0o644)
    env = {"SEEDVAULT_REPOSITORY": f"file://{tmp_path / 'repo'}", "SEEDVAULT_PASSPHRASE_FILE": str(pw)}
    res = invoke_checked(["put", "--label", "x"], env, input=b"x", expect=0)
    assert len(_warnings(res.stderr)) == 1 and "(mode 0644)" in res.stderr


def test_the_local_driver_creates_files_0600_and_directories_0700(tmp_path, local_repo):
    old = os.umask(0o022)
    try:
        invoke_checked(["put", "--label", "x"], local_repo.env, input=b"data", expect=0)
        existing = tmp_path / "kept"
        existing.mkdir(mode=0o755)
        existing.chmod(0o755)
        LocalStorage(existing / "a" / "b").put_bytes("v1/x/y", b"z")
    finally:
        os.umask(old)
    paths = [local_repo.root, *local_repo.root.rglob("*")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {0o700}
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()} == {0o600}
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # an operator's directory keeps its mode
    made = [existing / "a", existing / "a" / "b", existing / "a" / "b" / "v1", existing / "a" / "b" / "v1" / "x"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in made] == [0o700] * 4
    assert stat.S_IMODE((existing / "a" / "b" / "v1" / "x" / "y").stat().st_mode) == 0o600


# --- the passphrase's trailing newline ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "passphrase", "warned"),
    [
        (b"pass phrase", b"pass phrase", False),
        (b"pass phrase\n", b"pass phrase", False),
        (b"pass phrase\n\n", b"pass phrase\n", True),
        (b"pass phrase\r\n", b"pass phrase\r", True),
        (b" pass phrase \n", b" pass phrase ", False),
    ],
)
def test_a_passphrase_file_loses_exactly_its_one_trailing_newline(tmp_path, capsys, content, passphrase, warned):
    pw = tmp_path / "pass"
    pw.write_bytes(content)
    pw.chmod(0o600)
    assert KeySource("passphrase", origin="test", path=pw).read() == passphrase
    assert ("still ends with a line break" in capsys.readouterr().err) is warned


def test_two_trailing_newlines_make_another_key_than_one(tmp_path):
    ids = {}
    for name, content in (("one", "horse\n"), ("bare", "horse"), ("two", "horse\n\n")):
        pw = tmp_path / name
        pw.write_text(content)
        pw.chmod(0o600)
        env = {"SEEDVAULT_REPOSITORY": f"file://{tmp_path / 'repo'}", "SEEDVAULT_PASSPHRASE_FILE": str(pw)}
        invoke_checked(["init"], env, expect=0)
        ids[name] = invoke_checked(["key", "id"], env, expect=0).stdout
    assert ids["one"] == ids["bare"] != ids["two"]


# --- labels ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "rule"),
    [
        ("orders\ndb", "'\\n'"),
        ("../../etc/passwd", "'/'"),
        ("back\\slash", "'\\\\'"),
        ("x" * 100_000, "100000 characters"),
        ("", "0 characters"),
        ("tab\there", "'\\t'"),
        ("zero\u200bwidth", "'\\u200b'"),
    ],
)
def test_a_label_breaking_the_rules_is_refused_before_anything_is_written(local_repo, label, rule):
    res = invoke_checked(["put", "--label", label], local_repo.env, input=b"data", expect=UsageError.exit_code)
    assert "label name: values are 1-256 characters without line breaks" in res.stderr and rule in res.stderr
    keys = local_repo.root / layout.KEYS
    assert not keys.exists() or not any(keys.iterdir()), "a refused backup wrote nothing"


def test_label_names_and_counts_are_bounded_and_fair_labels_pass(local_repo):
    repo = local_repo.repository()
    for labels in ({"Name": "x"}, {"../x": "x"}, {"a" * 65: "x"}, {f"k{i}": "x" for i in range(33)}, {"n": 5}):
        with pytest.raises(UsageError):
            repo.begin(kind="put", labels=labels)
    fair = {"name": "Orders DB (eu-west) ünïcode", "database": "orders", "system_id": "7412345678901234567"}
    with repo.begin(kind="put", labels=fair) as backup:
        backup.write_object("data", io.BytesIO(b"d"))
    assert repo.manifest(backup.backup_id)["labels"] == fair


def test_a_label_at_the_bound_is_accepted(local_repo):
    invoke_checked(["put", "--label", "x" * 256], local_repo.env, input=b"d", expect=0)
    invoke_checked(["put", "--label", "x" * 257], local_repo.env, input=b"d", expect=UsageError.exit_code)


def test_no_label_rule_applies_to_reading_old_backups(local_repo: Path) -> None:
    """Labels are checked when written; reading only asks for strings (a backup of 0.2 stays readable)."""
    from seedvault.format import manifest as mf

    body, _ = mf.parse(
        mf.canonical(
            {
                "body": {
                    **_minimal_body(),
                    "labels": {"Old Key": "a/b"},
                },
                "mac": "0" * 64,
            }
        ),
        "20261125T020000Z-3f9a1c",
    )
    assert body["labels"] == {"Old Key": "a/b"}


def _minimal_body() -> dict:
    return {
        "format": "seedvault-manifest",
        "version": 1,
        "id": "20261125T020000Z-3f9a1c",
        "kind": "put",
        "labels": {},
        "source": {},
        "parent": None,
        "started": "2026-11-25T02:00:00.000000Z",
        "finished": "2026-11-25T02:00:01.000000Z",
        "tool": {"name": "seedvault", "version": "0.2.0"},
        "cipher": "aes-256-gcm",
        "chunk_size": 1 << 20,
        "compression": {"name": "zstd", "level": 3},
        "key": {"key_id": "k-0123456789abcdef", "kind": "raw", "kdf": None, "wrap": "aes-256-gcm", "key_objects": "x"},
        "features": [],
        "objects": [],
        "raw_size": 0,
        "compressed_size": 0,
        "stored_size": 0,
    }
