"""``seedvault metrics``: figures equal the repository's own (catalog, audit log), exposition, textfile, push."""

from __future__ import annotations

import json
import os

from prometheus_client.parser import text_string_to_metric_families

from seedvault import metrics
from seedvault.audit import parse_time
from tests.cli_runner import invoke
from tests.fixtures.s3 import free_loopback_port


def _cli(env, *args, input=None, rc=0):
    res = invoke(list(args), env, input=input)
    assert res.exit_code == rc, res.stderr
    return res


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


G = (("database", "orders"), ("kind", "put"), ("store", "stream"))


def test_figures_are_the_newest_backups_and_the_audited_failures(local_repo):
    env = local_repo.env
    _cli(env, "init")
    _cli(env, "put", "--label", "orders", input=b"a" * 1000)
    _cli(env, "put", "--label", "orders", input=os.urandom(5000))
    _cli(env, "put", "--label", "orders", "--", "sh", "-c", "exit 4", rc=50)
    _cli(env, "put", "--label", "other", input=b"b")
    newest = [b for b in json.loads(_cli(env, "list", "--json").stdout) if b["labels"]["name"] == "orders"][-1]
    _cli(env, "verify", newest["id"])

    got = _samples(_cli(env, "metrics").stdout.decode())
    assert got[("seedvault_backup_last_success_timestamp_seconds", G)] == parse_time(newest["finished"]).timestamp()
    assert got[("seedvault_backup_stored_bytes", G)] == newest["stored_size"]
    assert got[("seedvault_backup_raw_bytes", G)] == 5000
    assert got[("seedvault_backups", G)] == 2
    assert got[("seedvault_backup_failures_total", G)] == 1
    other = (("database", "other"), ("kind", "put"), ("store", "stream"))
    assert got[("seedvault_backup_failures_total", other)] == 0  # every group has the counter, from zero
    assert ("seedvault_backup_last_verified_timestamp_seconds", other) not in got
    assert (
        got[("seedvault_backup_last_verified_timestamp_seconds", G)]
        > got[("seedvault_backup_last_success_timestamp_seconds", G)]
    )
    assert got[("seedvault_audit_chain_ok", ())] == 1
    assert got[("seedvault_repository_stored_bytes", (("part", "put"),))] > newest["stored_size"]
    assert not any(name == "seedvault_repository_cost_estimate_dollars" for name, _ in got)  # file://: no prices
    assert not any(newest["id"] in str(labels) for _, labels in got)  # never a backup id as a label


def test_textfile_is_written_atomically_and_matches_stdout(local_repo, tmp_path):
    env = local_repo.env
    _cli(env, "init")
    _cli(env, "put", "--label", "orders", input=b"x")
    out = tmp_path / "tf" / "seedvault.prom"
    out.parent.mkdir()
    out.write_text("old content\n")
    res = _cli(env, "metrics", "--textfile", str(out))
    assert res.stdout == b""
    assert "written to" in res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["seedvault.prom"]  # no temp file left
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    written = _samples(out.read_text())
    assert written[("seedvault_backups", G)] == 1
    missing = _cli(env, "metrics", "--textfile", str(tmp_path / "nope" / "x.prom"), rc=3)
    assert missing.stderr.startswith("seedvault: error: textfile directory") and missing.stderr.count("\n") == 1


def test_push_to_an_unreachable_gateway_is_one_line_without_credentials(local_repo):
    env = local_repo.env
    _cli(env, "init")
    url = f"http://ops:pushsecret-9d1@127.0.0.1:{free_loopback_port()}"
    res = _cli(env, "metrics", "--push", url, rc=63)
    assert res.stderr.startswith("seedvault: error: push to the Pushgateway at http://127.0.0.1:")
    assert "pushsecret" not in res.stderr and res.stderr.count("\n") == 1


def test_groups_map_kinds_to_store_database_kind():
    assert metrics.group_of({"kind": "postgres-logical", "labels": {"name": "nightly", "database": "app"}}) == (
        "postgres", "app", "logical")  # fmt: skip
    assert metrics.group_of({"kind": "postgres-physical", "labels": {"name": "pg-7", "system_id": "7"}}) == (
        "postgres", "7", "physical")  # fmt: skip
    online = {"kind": "neo4j", "labels": {"database": "neo4j"}, "source": {"mode": "online", "backup_type": "DIFF"}}
    assert metrics.group_of(online) == ("neo4j", "neo4j", "online-diff")
    assert metrics.group_of({"kind": "platform", "labels": {"name": "platform"}}) == ("platform", "platform", "group")
