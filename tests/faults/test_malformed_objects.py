"""One malformed object in an old backup damages that backup only (issue 13.1).

Before: a key object that is a JSON list, a ``nonce`` that is a number or a manifest whose ``features`` is a
number made ``list``, ``list --latest`` and ``verify --all`` fail for the whole repository with an internal
error (exit 1), and the restore and drill flows' "latest backup" lookup with them. Now: ``list`` shows the
backup as damaged with the reason and exits 0 (a warning on stderr names it), ``list --latest`` takes the
newest good backup and names the skipped newer ones on stderr, ``verify --all`` exits 24 naming it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from seedvault.errors import AuthenticationFailed, VerificationFailed
from seedvault.format import layout
from tests.faults.catalogued import invoke_checked
from tests.fixtures.repo import LocalRepo


def _put(local_repo: LocalRepo, label: str) -> str:
    res = invoke_checked(["put", "--label", label], local_repo.env, input=label.encode() * 100, expect=0)
    return res.stdout.decode().strip()


@pytest.fixture
def three(local_repo: LocalRepo) -> list[str]:
    """Three backups, oldest first."""
    return [_put(local_repo, name) for name in ("old", "mid", "new")]


def _key_object(local_repo: LocalRepo, backup_id: str) -> Path:
    (path,) = (local_repo.root / layout.keys_prefix(backup_id)).glob("*.json")
    return path


def _damage(local_repo: LocalRepo, backup_id: str, how: str) -> None:
    if how == "key-is-list":
        _key_object(local_repo, backup_id).write_text("[]")
    elif how == "nonce-is-number":
        path = _key_object(local_repo, backup_id)
        record = json.loads(path.read_text())
        record["nonce"] = 12
        path.write_text(json.dumps(record))
    elif how == "features-is-number":
        path = local_repo.root / layout.manifest_key(backup_id)
        doc = json.loads(path.read_text())
        doc["body"]["features"] = 5
        path.write_text(json.dumps(doc))
    else:
        raise AssertionError(how)


DAMAGE = ["key-is-list", "nonce-is-number", "features-is-number"]


@pytest.mark.parametrize("how", DAMAGE)
def test_list_shows_the_damaged_backup_and_every_good_one(local_repo, three, how):
    old, mid, new = three
    _damage(local_repo, old, how)
    res = invoke_checked(["list", "--json"], local_repo.env, expect=0)
    rows = {r["id"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {old, mid, new}
    assert rows[mid]["problem"] is None and rows[new]["problem"] is None
    assert "corrupted" in rows[old]["problem"] and old in rows[old]["problem"]
    assert f"1 of 3 listed backups cannot be read ({old})" in res.stderr
    table = invoke_checked(["list"], local_repo.env, expect=0)
    line = next(ln for ln in table.stdout.decode().splitlines() if old in ln)
    assert "corrupted" in line
    # a filter cannot tell what a damaged backup was, so it stays in sight
    filtered = json.loads(invoke_checked(["list", "--json", "--label", "mid"], local_repo.env, expect=0).stdout)
    assert [r["id"] for r in filtered] == [old, mid]


@pytest.mark.parametrize("how", DAMAGE)
def test_latest_takes_the_newest_good_backup_and_names_what_it_skipped(local_repo, three, how):
    old, mid, new = three
    _damage(local_repo, old, how)
    res = invoke_checked(["list", "--latest"], local_repo.env, expect=0)
    assert res.stdout.decode() == new + "\n" and res.stderr == ""  # an older damaged one hides nothing
    _damage(local_repo, new, how)
    res = invoke_checked(["list", "--latest"], local_repo.env, expect=0)
    assert res.stdout.decode() == mid + "\n"
    assert f"skipped backup {new}, which cannot be read" in res.stderr and old not in res.stderr
    assert invoke_checked(["list", "--latest", "--label", "new"], local_repo.env, expect=12).stdout == b""


@pytest.mark.parametrize("how", DAMAGE)
def test_verify_all_fails_naming_the_damaged_backup_and_checks_the_others(local_repo, three, how):
    old, mid, new = three
    _damage(local_repo, mid, how)
    res = invoke_checked(["verify", "--all"], local_repo.env, expect=VerificationFailed.exit_code)
    out = res.stdout.decode()
    assert f"{old}: ok" in out and f"{new}: ok" in out and f"{mid}: FAILED" in out
    assert f"1 of 3 backups failed verification; {mid}: " in res.stderr
    for args in (["get", mid], ["show", mid], ["verify", mid]):
        failed = invoke_checked(args, local_repo.env)
        assert failed.exit_code in (AuthenticationFailed.exit_code, VerificationFailed.exit_code), failed.stderr


def test_no_verify_listing_survives_a_malformed_manifest(local_repo, three):
    old, mid, new = three
    _damage(local_repo, new, "features-is-number")
    env = {k: v for k, v in local_repo.env.items() if k != "SEEDVAULT_KEY_FILE"}
    rows = json.loads(invoke_checked(["list", "--json", "--no-verify"], env, expect=0).stdout)
    assert [r["problem"] is None for r in rows] == [True, True, False]
    res = invoke_checked(["list", "--latest", "--no-verify"], env, expect=0)
    assert res.stdout.decode() == mid + "\n" and new in res.stderr


class _Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("how", DAMAGE)
def test_restore_and_drill_lookup_of_the_latest_backup_skips_a_damaged_one(local_repo, monkeypatch, how):
    """tasks.postgres.latest_backup (restore-postgres, dr-drill) and tasks.neo4j.latest_neo4j_backup (as functions)."""
    import tasks.neo4j
    import tasks.postgres

    logger = logging.getLogger("test-latest")
    logged = _Logged()
    logger.addHandler(logged)
    for module in (tasks.postgres, tasks.neo4j):
        monkeypatch.setattr(module, "get_run_logger", lambda: logger)
    repo = local_repo.repository()
    made: dict[str, list[str]] = {"pg": [], "neo4j": []}
    for _ in range(3):
        with repo.begin(kind=tasks.postgres.KIND, labels={"name": "orders", "database": "orders"}) as b:
            b.write_object("dump", io.BytesIO(b"pg"))
        made["pg"].append(b.backup_id)
        with repo.begin(kind=tasks.neo4j.KIND, labels={"name": "graph"}, source={"database": "graph"}) as b:
            b.write_object("dump", io.BytesIO(b"neo4j"))
        made["neo4j"].append(b.backup_id)
    for kind in made:
        _damage(local_repo, made[kind][0], how)  # an old one: nothing changes
        _damage(local_repo, made[kind][2], how)  # the newest: the one before it, said in the log
    assert tasks.postgres.latest_backup.fn(local_repo.repository(), "orders") == made["pg"][1]
    assert tasks.neo4j.latest_neo4j_backup.fn(local_repo.repository(), "graph") == made["neo4j"][1]
    skipped = [ln for ln in logged.lines if ln.startswith("skipped backup")]
    # each lookup names every newer unreadable backup: both kinds' newest (their kind cannot be told)
    assert any(made["pg"][2] in ln for ln in skipped) and any(made["neo4j"][2] in ln for ln in skipped)
    assert not any(made["pg"][0] in ln or made["neo4j"][0] in ln for ln in skipped)
