"""Flows are audited like the CLI (issue 14.3): each event says it came from Prefect, with the flow run id."""

from __future__ import annotations

from seedvault import audit
from seedvault.crypto.keys import KeySource
from seedvault.repository import Repository
from seedvault.storage.local import LocalStorage


def test_backup_and_drill_flows_append_events_naming_their_flow_runs(saved_blocks, source_db, tmp_path, monkeypatch):
    from flows.backup_postgres import backup_postgres_flow
    from flows.dr_drill import dr_drill_flow

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    backup = backup_postgres_flow(**saved_blocks.params(), verify=False)
    dr_drill_flow(**saved_blocks.params())
    key_file = tmp_path / "key"
    key_file.write_text(saved_blocks.raw_key + "\n")
    key_file.chmod(0o600)
    repo = Repository(LocalStorage(saved_blocks.repo_root), KeySource("raw", origin="test", path=key_file))
    report = audit.verify_chain(repo)
    assert report.ok, report.problems
    mine = [e for e in report.events if e.backup_ids == (backup["id"],)]  # the session's other tests add theirs
    assert [(e.operation, e.result) for e in mine] == [
        ("backup", "ok"),
        ("verify", "ok"),  # the drill verifies before it restores
        ("restore-test", "ok"),
        ("drill", "ok"),  # the drill's own event: RTO and RPO against the targets
    ]
    runs = [e.who.get("flow_run_id") for e in mine]
    assert all(e.who["via"] == "prefect" for e in mine) and None not in runs
    assert runs[0] != runs[1] == runs[2] == runs[3]  # the backup flow's run, then the drill's
    state = audit.state(repo)
    assert state.last_restore_tested[backup["id"]].ok and state.last_verified[backup["id"]].ok
