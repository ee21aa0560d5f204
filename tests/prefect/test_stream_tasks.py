"""The streaming stages as tasks, in isolation: bytes and seconds per step, and how a failure travels."""

from __future__ import annotations

import io
import os

import pytest
from prefect import flow

from seedvault.crypto.keys import KeySource, generate_raw_key
from seedvault.errors import SourceError
from seedvault.repository import Repository
from seedvault.storage.local import LocalStorage
from tasks.stream import run_object_as_tasks
from tests.prefect.api import task_runs

DATA = os.urandom(3 << 20) + b"compressible " * 200_000


class BrokenReader(io.RawIOBase):
    """Yields some data, then fails the way a dump whose connection dropped does."""

    def __init__(self) -> None:
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        if self.sent >= 2 << 20:
            raise SourceError("pg_dump failed (exit 1): connection to server was lost")
        self.sent += 1 << 20
        return DATA[: 1 << 20]


@pytest.fixture
def repo(tmp_path) -> Repository:
    key = KeySource("raw", origin="test", value=generate_raw_key().encode())
    return Repository(LocalStorage(tmp_path / "repo", create=True), key)


@flow(name="stream-test")
def stream_one(repo: Repository, broken: bool) -> dict:
    # The reader is made here: Prefect reads from file-like objects passed as *flow* parameters.
    reader = BrokenReader() if broken else io.BytesIO(DATA)
    with repo.begin(kind="test") as backup:
        stats = run_object_as_tasks(backup, "data", reader)
    return {"id": backup.backup_id, "raw": stats.raw_size, "stored": stats.stored_size, "sha": stats.sha256}


def test_stages_stream_an_object_and_report_bytes_and_seconds(prefect_harness, repo):
    state = stream_one(repo, broken=False, return_state=True)
    out = state.result()
    assert out["raw"] == len(DATA) and b"".join(repo.read_object(out["id"], "data")) == DATA
    runs = {t.name: t for t in task_runs(state.state_details.flow_run_id, expect=4)}
    assert set(runs) == {"read-data", "compress-data", "encrypt-data", "upload-data"}
    assert all(t.state.is_completed() and t.empirical_policy.retries == 0 for t in runs.values())


def test_a_failing_stage_fails_the_stream_with_its_own_error_and_leaves_nothing(prefect_harness, repo):
    state = stream_one(repo, broken=True, return_state=True)
    with pytest.raises(SourceError, match="connection to server was lost"):
        state.result()
    runs = {t.name: t for t in task_runs(state.state_details.flow_run_id, expect=4)}
    # Every stage failed, and with the cause itself (the pipes carry a seedvault error as it is).
    states = {name: (t.state.type.value, t.state.message) for name, t in runs.items()}
    assert all(t.state.is_failed() and "connection to server was lost" in t.state.message for t in runs.values()), (
        states
    )
    assert set(runs) == {"read-data", "compress-data", "encrypt-data", "upload-data"}
    assert list(repo.entries()) == [] and list(repo.storage.list("v1/backups/")) == []
