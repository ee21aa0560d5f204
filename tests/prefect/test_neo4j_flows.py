"""backup-neo4j and restore-neo4j on the harness, with the fake neo4j-admin (tests/fixtures/fake_neo4j.py).

There is no Bolt server here: the target blocks have no URI, so no counts are recorded or checked, except
where a fake graph is put in through the block's seam (``Neo4jTarget.graph``, the one place the Bolt side
is made). The fake's store file (``store-<db>`` in its state directory) is the database's bytes, and
``running-<db>`` exists while it is started.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.backup_neo4j import backup_neo4j_flow
from flows.restore_neo4j import restore_neo4j_flow
from seedvault import process
from seedvault.crypto.keys import generate_raw_key
from seedvault.errors import ConfigError, DatabaseLeftStopped, SourceError, TargetError
from seedvault.repository import Repository
from seedvault.units import human_bytes
from tests.fixtures import fake_neo4j
from tests.prefect.api import as_fields, latest_table, task_runs
from tests.unit.test_neo4j_admin import DB, FakeGraph, _setup


@dataclass
class Neo4jEnv:
    state: Path
    repository: str
    key: str
    target: str
    raw_key: str

    def params(self) -> dict[str, str]:
        return {"repository": self.repository, "key": self.key, "target": self.target}

    @property
    def store(self) -> Path:
        return self.state / f"store-{DB}"

    @property
    def running(self) -> bool:
        return (self.state / f"running-{DB}").exists()

    def events(self) -> list[list[str]]:
        log = self.state / "events.log"
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    def repo(self) -> Repository:
        from blocks import SeedvaultEncryptionKey, SeedvaultRepository

        key = SeedvaultEncryptionKey.load(self.key).key_source()
        repo = SeedvaultRepository.load(self.repository).open(key, create=True)
        repo.config(create=True)
        return repo

    def artifact(self, kind: str) -> dict:
        return as_fields(latest_table(f"seedvault-neo4j-{kind}-{self.target}-{DB}")[0])

    def failure_artifact(self, kind: str) -> dict:
        return as_fields(latest_table(f"seedvault-failure-neo4j-{kind}-{self.target}-{DB}")[0])


@pytest.fixture(scope="module")
def shared_blocks(prefect_harness, tmp_path_factory) -> tuple[str, str, Path, str]:
    """One repository block and one key block for the module (saving a repository block takes seconds)."""
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository

    root = tmp_path_factory.mktemp("neo4j-flows") / "repo"
    raw_key = generate_raw_key()
    SeedvaultRepository(local_path=str(root)).save("neo4j-flows-repo", overwrite=True)
    SeedvaultEncryptionKey(kind="raw", value=raw_key).save("neo4j-flows-key", overwrite=True)
    return "neo4j-flows-repo", "neo4j-flows-key", root, raw_key


def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared, version: str, edition: str) -> Neo4jEnv:
    """The fake Neo4j (running), an empty repository, and a saved target block with stop/start commands."""
    from blocks import Neo4jTarget

    repository, key, root, raw_key = shared
    shutil.rmtree(root, ignore_errors=True)  # each test starts with an empty repository
    state = _setup(tmp_path, monkeypatch, version, edition)
    (tmp_path / "staging").mkdir()
    target = f"graph-{uuid.uuid4().hex[:6]}"
    Neo4jTarget(
        database=DB,
        staging_dir=str(tmp_path / "staging"),
        stop_command=f"fake-neo4j stop {DB}",
        start_command=f"fake-neo4j start {DB}",
        backup_from="127.0.0.1:6362",
    ).save(target, overwrite=True)
    return Neo4jEnv(state, repository, key, target, raw_key)


@pytest.fixture
def community(shared_blocks, tmp_path, monkeypatch) -> Neo4jEnv:
    return _env(tmp_path, monkeypatch, shared_blocks, "5.26.1", "community")


@pytest.fixture
def enterprise(shared_blocks, tmp_path, monkeypatch) -> Neo4jEnv:
    return _env(tmp_path, monkeypatch, shared_blocks, "5.26.1", "enterprise")


@pytest.fixture
def bolt_seam(monkeypatch) -> dict:
    """``seam["graph"]`` is what every Neo4jTarget hands the engine as its Bolt side (None: no Bolt)."""
    from blocks import Neo4jTarget

    seam: dict = {"graph": None}
    monkeypatch.setattr(Neo4jTarget, "graph", lambda self, database=None: seam["graph"])
    return seam


class MovieGraph(FakeGraph):
    """The unit tests' fake Bolt side, with one relationship type (ACTED_IN: one per Person)."""

    def counts(self, *, exact: bool = False) -> dict:
        c = super().counts()
        return dict(c, types={"ACTED_IN": c["labels"]["Person"]}, relationships=c["labels"]["Person"])


def _tasks(state) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in task_runs(state.state_details.flow_run_id):
        out.setdefault(t.name.rsplit("-", 1)[0], []).append(t)
    return out


def test_community_dump_backup_then_restore_is_byte_identical_with_a_safety_copy(community: Neo4jEnv):
    original = community.store.read_bytes()
    state = backup_neo4j_flow(**community.params(), return_state=True)
    summary = state.result()
    assert summary["mode"] == "dump" and summary["database"] == DB and summary["attempt"] == 1
    assert summary["counts"] is None, "no Bolt URI: no counts"
    assert summary["downtime_seconds"] >= 0 and summary["verify"]["bytes"] == summary["raw_size"]
    assert community.events() == [["stop", DB], ["start", DB]] and community.running
    tasks = _tasks(state)
    assert {"neo4j-preflight", "backup-neo4j", "verify-backup"} <= set(tasks)
    assert [t.run_count for t in tasks["backup-neo4j"]] == [1]

    fields = community.artifact("backup")
    assert fields["id"] == summary["id"] and fields["status"] == "completed, verified"
    assert fields["mode"] == "dump" and fields["database"] == DB and fields["neo4j"] == "5.26.1 community"
    assert fields["downtime s"] == round(summary["downtime_seconds"], 3)
    assert fields["raw size"] == human_bytes(summary["raw_size"]) and summary["raw_size"] == len(
        b"NEO4JDUMP" + original
    )
    assert fields["stored size"] == human_bytes(summary["stored_size"]) and summary["stored_size"] > 0
    assert fields["counts"] == "not recorded (no Bolt URI)" and "nodes" not in fields

    community.store.write_bytes(b"damaged")  # the live database goes bad
    report = restore_neo4j_flow(**community.params())
    assert report["backup_id"] == summary["id"], "without an id the latest backup of the database is restored"
    assert community.store.read_bytes() == original and community.running
    assert report["safety_copy"] and report["counts"] is None and not report["rolled_back"]
    repo = community.repo()
    assert b"".join(repo.read_object(report["safety_copy"], "dump")) == b"NEO4JDUMPdamaged"
    fields = community.artifact("restore")
    assert fields["backup id"] == summary["id"] and fields["safety copy"] == report["safety_copy"]
    assert fields["status"] == "restored" and fields["counts"] == "not checked (no Bolt URI)"
    assert fields["downtime s"] >= 0 and fields["verify backup s"] >= 0

    # "Latest" is still the nightly backup, never the safety copy the restore just took.
    again = restore_neo4j_flow(**community.params(), safety_copy=False)
    assert again["backup_id"] == summary["id"] and again["safety_copy"] is None
    assert community.store.read_bytes() == original


def test_enterprise_online_full_then_diff_with_counts_from_an_injected_graph(enterprise: Neo4jEnv, bolt_seam):
    graph = MovieGraph(enterprise.state, edition="enterprise")
    bolt_seam["graph"] = graph
    full = backup_neo4j_flow(**enterprise.params(), mode="online", backup_type="FULL")
    enterprise.store.write_bytes(enterprise.store.read_bytes() + b"PPP more")
    after_diff = enterprise.store.read_bytes()
    diff = backup_neo4j_flow(**enterprise.params(), mode="online", backup_type="DIFF")
    assert (full["backup_type"], diff["backup_type"]) == ("FULL", "DIFF")
    assert diff["parent"] == full["id"] and diff["chain"] == [full["id"], diff["id"]]
    assert diff["downtime_seconds"] is None and enterprise.events() == [], "online: never stopped"
    assert diff["counts"] == graph.counts() and full["counts"]["labels"]["Person"] < graph.counts()["labels"]["Person"]

    fields = enterprise.artifact("backup")
    assert fields["id"] == diff["id"] and fields["mode"] == "online DIFF" and fields["parent"] == full["id"]
    assert fields["chain length"] == 2 and fields["downtime s"] == "none (database kept running)"
    assert fields["nodes"] == graph.counts()["nodes"]
    assert fields["relationships"] == fields["relationships :ACTED_IN"] == graph.counts()["labels"]["Person"]
    assert fields["nodes :Person"] == graph.counts()["labels"]["Person"]
    assert fields["nodes :Movie"] == graph.counts()["labels"]["Movie"]
    assert fields["indexes"] == 0 and fields["constraints"] == 0 and "counts" not in fields

    # Restore the chain's end (the latest backup) with no Bolt side: the safety copy is a dump.
    bolt_seam["graph"] = None
    enterprise.store.write_bytes(b"lost")
    state = restore_neo4j_flow(**enterprise.params(), return_state=True)
    report = state.result()
    assert report["backup_id"] == diff["id"] and report["mode"] == "online" and report["safety_copy"]
    assert enterprise.store.read_bytes() == after_diff and enterprise.running
    assert len(_tasks(state)["verify-backup"]) == 2, "the whole chain is read back before anything stops"


def test_failing_dump_fails_with_the_tools_message_and_neo4j_runs_again(community: Neo4jEnv, monkeypatch, receiver):
    monkeypatch.setenv(fake_neo4j.FAIL_ENV, "dump")
    state = backup_neo4j_flow(
        **community.params(), retry_delay_seconds=0, notify_block="custom-webhook/sv-hook", return_state=True
    )
    assert state.is_failed()
    with pytest.raises(SourceError) as info:
        state.result()
    reason = str(info.value)
    assert "simulated No space left on device" in reason and "\n" not in reason
    assert community.running, "the engine starts the database again after a failed dump"
    # Retried whole once (the flow's default): two downtime windows, each ended by a start.
    assert community.events() == [["stop", DB], ["start", DB], ["stop", DB], ["start", DB]]
    (backup,) = _tasks(state)["backup-neo4j"]
    assert backup.run_count == 2 and backup.state.is_failed()
    assert community.repo().backup_ids() == [], "a failed backup never appears"
    assert community.failure_artifact("backup") == {"status": "failed", "database": DB, "reason": reason}
    (hook,) = receiver.wait("/hook")
    assert hook["text"].startswith("seedvault backup-failed: backup-neo4j (no deployment) [neo4j neo4j] | ")
    assert reason in hook["text"] and "Where: store neo4j, database neo4j" in hook["text"]
    assert not any(form in json.dumps(receiver.bodies) for form in process.secret_forms(community.raw_key))


def test_a_database_left_stopped_is_not_retried(community: Neo4jEnv, monkeypatch):
    monkeypatch.setenv(fake_neo4j.FAIL_ENV, "start")  # the dump works, starting the database again fails
    state = backup_neo4j_flow(**community.params(), retries=2, retry_delay_seconds=0, return_state=True)
    with pytest.raises(DatabaseLeftStopped, match="starting Neo4j database neo4j failed .*simulated start failure"):
        state.result()
    (backup,) = _tasks(state)["backup-neo4j"]
    assert backup.run_count == 1, "another attempt would stop it again: a person must start it now"
    assert community.events() == [["stop", DB], ["start", DB]] and not community.running


def test_online_backup_of_community_is_refused_before_anything_and_not_retried(community: Neo4jEnv):
    state = backup_neo4j_flow(**community.params(), mode="online", retry_delay_seconds=0, return_state=True)
    with pytest.raises(ConfigError, match="online backups need Neo4j Enterprise.*HINT: use mode dump"):
        state.result()
    tasks = _tasks(state)
    assert [t.run_count for t in tasks["neo4j-preflight"]] == [1] and "backup-neo4j" not in tasks
    assert community.events() == [] and community.running


def test_failed_restore_is_not_retried_and_the_previous_database_is_back(community: Neo4jEnv):
    from blocks import SeedvaultRepository

    repo = community.repo()
    settings = SeedvaultRepository.load(community.repository).settings()
    source = {"type": "neo4j", "database": DB, "mode": "dump", "version": "5.26.1", "edition": "community"}
    with repo.begin(kind="neo4j", labels={"name": f"neo4j-{DB}", "database": DB}, source=source,
                    compression=settings.compression, chunk_size=settings.chunk_size) as bad:  # fmt: skip
        bad.write_object("dump", io.BytesIO(b"authenticated, but not a Neo4j dump"))
    live = community.store.read_bytes()
    state = restore_neo4j_flow(**community.params(), return_state=True)
    with pytest.raises(TargetError) as info:
        state.result()
    reason = str(info.value)
    assert "Not a valid Neo4j archive" in reason and "the previous database was put back from" in reason
    assert community.store.read_bytes() == live and community.running
    (restore,) = _tasks(state)["restore-neo4j"]
    assert restore.run_count == 1 and restore.empirical_policy.retries == 0
    assert community.failure_artifact("restore")["reason"] == reason


def test_restore_compares_counts_through_the_injected_graph(community: Neo4jEnv, bolt_seam):
    pytest.importorskip("seedvault.sources.neo4j.bolt", reason="the Bolt module (compare_counts) is not written yet")
    bolt_seam["graph"] = FakeGraph(community.state)
    backup = backup_neo4j_flow(**community.params())
    assert backup["counts"]["labels"]["Person"] > 0
    original = community.store.read_bytes()
    community.store.write_bytes(b"PP")
    report = restore_neo4j_flow(**community.params())
    assert report["counts"] == backup["counts"] and community.store.read_bytes() == original
    fields = community.artifact("restore")
    assert (
        fields["status"] == "restored, counts verified"
        and fields["nodes :Person"] == backup["counts"]["labels"]["Person"]
    )


def test_bolt_password_stays_in_the_block_and_the_graph(community: Neo4jEnv, monkeypatch):
    """The real path: the block's URI and password make a BoltGraph (its queries faked, no server here)."""
    from blocks import Neo4jTarget
    from seedvault.sources.neo4j import bolt
    from tests.prefect.api import everything_stored

    password = "bolt-pw-" + uuid.uuid4().hex
    block = Neo4jTarget.load(community.target)
    block.uri, block.password = "neo4j://127.0.0.1:7687", password
    block.save(community.target, overwrite=True)
    made: list = []
    monkeypatch.setattr(
        bolt.BoltGraph, "counts", lambda self: made.append(self) or MovieGraph(community.state).counts()
    )
    monkeypatch.setattr(bolt.BoltGraph, "serves", lambda self, name=None: True)
    summary = backup_neo4j_flow(**community.params())
    assert summary["counts"] == MovieGraph(community.state).counts() and made
    assert made[0].uri == "neo4j://127.0.0.1:7687" and made[0]._driver is None  # closed (never opened here)
    fields = community.artifact("backup")
    assert fields["server"] == f"neo4j {DB} (local, neo4j://127.0.0.1:7687)"
    assert fields["relationships :ACTED_IN"] == summary["counts"]["types"]["ACTED_IN"]
    with pytest.raises(ConfigError, match="a secret would appear in its arguments"):
        process.run(["echo", password])
    stored = everything_stored()
    assert not any(form in stored for form in process.secret_forms(password))
