"""``prune`` (issue 14, item 4): the plan, deletion order, kill -9 at every step, leases against a running read.

The planner's promises over random histories are tests/unit/test_retention_properties.py; PITR after a
prune on a real PostgreSQL is tests/integration/test_prune_pitr.py. Here: what the command does to a real
repository, and that a crash anywhere leaves nothing listed that cannot be restored.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from seedvault import leases
from seedvault.format import layout
from tests.fixtures.repo import LocalRepo
from tests.helpers import CLI, repo_files, run_cli

KEEP_ONE = json.dumps({"keep_within": "0s", "keep_last": 1, "min_verified": 0})
PAYLOADS = [bytes([i]) * (200_000 + i) for i in range(6)]


def _ids(env: dict[str, str]) -> list[str]:
    return [row["id"] for row in json.loads(run_cli(["list", "--json"], env, check=True).stdout)]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> LocalRepo:
    """Six backups of one label; with KEEP_ONE the newest stays and five go."""
    from tests.fixtures.repo import make_local_repo

    repo = make_local_repo(tmp_path_factory.mktemp("prune-template"))
    for data in PAYLOADS:
        run_cli(["put", "--label", "a"], repo.env, input=data, check=True)
    return repo


@pytest.fixture
def repo(template, tmp_path) -> LocalRepo:
    root = tmp_path / "repo"
    shutil.copytree(template.root, root)
    # Copies share the template's repository id: each gets its own catalog and audit caches.
    env = dict(template.env, SEEDVAULT_REPOSITORY=f"file://{root}", SEEDVAULT_RETENTION=KEEP_ONE,
               XDG_CACHE_HOME=str(tmp_path / "cache"))  # fmt: skip
    return LocalRepo(root, template.key_file, env)


def test_plan_without_yes_deletes_nothing_and_names_every_rule(repo):
    before = repo_files(repo.root)
    ids = _ids(repo.env)
    out = run_cli(["prune"], repo.env, check=True).stdout.decode()
    assert repo_files(repo.root) == before
    lines = out.splitlines()
    assert lines[-1] == "plan: delete 5 backups and 0 WAL files; nothing deleted (run with --yes)"
    assert f"keep   {ids[-1]} put a: keep_last 1" in lines
    for bid in ids[:-1]:
        assert f"DELETE {bid} put a: outside the policy (keep_within 0s, keep_last 1, min_verified 0)" in lines


def test_yes_deletes_manifests_then_data_and_a_second_run_deletes_nothing(repo, tmp_path):
    ids = _ids(repo.env)
    stored = sum(
        size
        for k, size in repo_files(repo.root).items()
        if k.startswith(layout.BACKUPS) and layout.backup_id_of(k) in ids[:-1]
    )
    trace = tmp_path / "trace"
    env = dict(repo.env, SEEDVAULT_FAULT_TRACE=str(trace))
    report = json.loads(run_cli(["prune", "--yes", "--json"], env, check=True).stdout)
    assert report["executed"] and report["deleted_backups"] == ids[:-1] and report["bytes_freed"] == stored
    assert _ids(repo.env) == ids[-1:]
    phases = [p for p in trace.read_text().split() if p.startswith("prune-")]
    assert phases == (
        ["prune-intent-stored", "prune-intent-recorded", "prune-forgotten"]
        + ["prune-manifest-deleted"] * 5
        + ["prune-backup-deleted"] * 5
    )
    left = {layout.backup_id_of(k) for k in repo_files(repo.root)} - {None}
    assert left == {ids[-1]}, "every deleted backup's data and key objects are gone"
    assert not list(repo.repository().storage.list(layout.LEASES)), "prune's lease is released"
    again = run_cli(["prune", "--yes"], repo.env, check=True).stdout.decode()
    assert again.splitlines()[-1] == "nothing to delete: every one of 1 backups and 0 WAL files is kept"
    assert run_cli(["get", ids[-1]], repo.env, check=True).stdout == PAYLOADS[-1]


KILL_POINTS = (
    ["prune-intent-stored", "prune-intent-recorded", "prune-forgotten"]
    + [f"prune-manifest-deleted:{n}" for n in range(1, 6)]
    + [f"prune-backup-deleted:{n}" for n in range(1, 6)]
)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_anywhere_lists_only_restorable_backups_and_cleanup_converges(repo, point):
    ids = _ids(repo.env)
    proc = run_cli(["prune", "--yes"], dict(repo.env, SEEDVAULT_FAULT_KILL_AT=point))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    listed = _ids(repo.env)
    assert listed and set(listed) <= set(ids) and ids[-1] in listed
    for bid in listed:  # everything listed restores, byte for byte
        assert run_cli(["get", bid], repo.env, check=True).stdout == PAYLOADS[ids.index(bid)]
    # The killed prune's lease is stale (its process is gone): cleanup removes every half-deleted backup...
    run_cli(["cleanup", "--grace", "0"], repo.env, check=True)
    left = {layout.backup_id_of(k) for k in repo_files(repo.root)} - {None}
    assert left == set(listed)
    assert not list(repo.repository().storage.list(layout.LEASES))
    # ...and a re-run of prune finishes the plan.
    run_cli(["prune", "--yes"], repo.env, check=True)
    assert _ids(repo.env) == ids[-1:]
    assert {layout.backup_id_of(k) for k in repo_files(repo.root)} - {None} == {ids[-1]}


def test_a_read_running_in_another_process_keeps_its_backup(repo):
    """Barman #200 against prune: a get (a restore of a put backup) holds its lease; prune keeps that backup."""
    ids = _ids(repo.env)
    reader = subprocess.Popen([*CLI, "get", ids[0]], env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline_lease = _wait_for_lease(repo.root, ids[0])
        assert deadline_lease
        report = json.loads(run_cli(["prune", "--yes", "--json"], repo.env, check=True).stdout)
        assert report["deleted_backups"] == ids[1:-1]
        (line,) = report["in_use"]
        assert line.startswith(f"{ids[0]}: get by ")
        kept = next(b for b in report["backups"] if b["id"] == ids[0])
        assert kept["keep"] and kept["reasons"][0].startswith("pinned: in use by get by ")
    finally:
        out, errs = reader.communicate(timeout=60)
    assert reader.returncode == 0, errs.decode()
    assert out == PAYLOADS[0]
    assert _ids(repo.env) == [ids[0], ids[-1]]
    # Once the read is over, the next prune deletes it.
    run_cli(["prune", "--yes"], repo.env, check=True)
    assert _ids(repo.env) == ids[-1:]


def test_a_read_that_starts_during_a_prune_refuses_the_backup_being_deleted(repo):
    """The other order: prune's intent is stored first; a reader that stores its lease then sees it, exit 60."""
    ids = _ids(repo.env)
    with leases.HeldLease(repo.repository(), "prune", [ids[0]], exclusive=True) as intent:
        proc = run_cli(["get", ids[0]], repo.env)
        assert proc.returncode == 60, proc.stderr.decode()
        assert f"backup {ids[0]} is being deleted by prune by " in proc.stderr.decode()
        assert intent.lease_id in proc.stderr.decode()
        assert run_cli(["get", ids[1]], repo.env, check=True).stdout == PAYLOADS[1]  # others read on
    assert not [k for k in repo_files(repo.root) if k.startswith(layout.LEASES)]


def test_a_bad_retention_setting_is_one_line_and_deletes_nothing(repo):
    before = repo_files(repo.root)
    proc = run_cli(["prune", "--yes"], dict(repo.env, SEEDVAULT_RETENTION='{"keep_dayly": 7}'))
    assert proc.returncode == 3, proc.stderr.decode()
    assert "unknown retention setting 'keep_dayly'" in proc.stderr.decode()
    assert repo_files(repo.root) == before


def _wait_for_lease(root: Path, backup_id: str, timeout: float = 30) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (root / layout.LEASES).glob("*.json") if (root / layout.LEASES).is_dir() else []:
            try:
                if backup_id in json.loads(path.read_text()).get("backup_ids", []):
                    return True
            except (OSError, ValueError):
                pass
        time.sleep(0.02)
    return False


def test_verification_pins_and_events_come_from_the_audit_log(repo):
    """min_verified from real verify events, a pin from a real pin event; prune's intent and result audited."""
    ids = _ids(repo.env)
    gated = dict(repo.env, SEEDVAULT_RETENTION=json.dumps({"keep_within": "0s", "keep_last": 1}))
    out = run_cli(["prune", "--yes"], gated, check=True).stdout.decode()
    assert "nothing to delete" in out.splitlines()[-1]  # nothing verified yet: every backup is kept
    assert f"keep   {ids[0]} put a: no newer backup has been verified yet" in out.splitlines()
    run_cli(["pin", ids[1], "--reason", "legal hold"], gated, check=True)
    run_cli(["verify", ids[-1]], gated, check=True)
    report = json.loads(run_cli(["prune", "--yes", "--json"], gated, check=True).stdout)
    assert report["deleted_backups"] == [ids[0], *ids[2:-1]]
    pinned = next(b for b in report["backups"] if b["id"] == ids[1])
    assert pinned["keep"] and pinned["reasons"][0].startswith("pinned: legal hold (by ")
    events = json.loads(run_cli(["audit", "--json"], gated, check=True).stdout)["events"]
    prunes = [(e["operation"], e["result"], e["backup_ids"]) for e in events if e["operation"].startswith("prune")]
    assert prunes == [("prune-intent", "ok", report["deleted_backups"]), ("prune", "ok", report["deleted_backups"])]


def test_prune_refuses_when_the_audit_log_is_not_intact(repo):
    ids = _ids(repo.env)
    run_cli(["verify", ids[-1]], repo.env, check=True)
    events = sorted((repo.root / layout.AUDIT).rglob("*.json"))
    assert len(events) >= 2
    events[0].unlink()  # an event removed: pins and verifications can no longer be trusted
    before = repo_files(repo.root)
    proc = run_cli(["prune", "--yes"], repo.env)
    assert proc.returncode == 24, proc.stderr.decode()
    assert "refusing to prune: the audit log cannot be trusted" in proc.stderr.decode()
    assert repo_files(repo.root) == before
