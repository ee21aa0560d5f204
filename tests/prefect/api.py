"""Reading back what the flows left on the Prefect API: runs, task runs, artifacts, logs, parameters."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort


def child_flow_runs(parent_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )


def task_runs(flow_run_id: UUID, timeout: float = 15, expect: int = 1) -> list[Any]:
    """The flow run's task runs once at least ``expect`` exist and all are in a final state.

    Task runs and their states reach the API asynchronously, after the flow call has returned: right after a
    run the API may list none of them yet (and ``all([])`` is true), or some still Running.
    """
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
            )
            settled = len(runs) >= expect and all(r.state is not None and r.state.is_final() for r in runs)
            if settled or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


def latest_table(key: str) -> tuple[list[dict[str, Any]], Any]:
    """Rows of the newest table artifact with ``key`` (the API returns table data as a JSON string)."""
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert arts, f"no artifact with key {key}"
    data = arts[0].data
    return (json.loads(data) if isinstance(data, str) else data), arts[0]


def as_fields(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["field"]: r["value"] for r in rows}


def run_logs(flow_run_ids: list[UUID]) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
    return [log.message for log in logs]


def _all(read, page: int = 200) -> list[Any]:
    out: list[Any] = []
    while True:
        batch = read(limit=page, offset=len(out))
        out += batch
        if len(batch) < page:
            return out


def everything_stored() -> str:
    """All flow runs (with parameters and state messages), task runs, logs and artifacts, as one text."""
    with get_client(sync_client=True) as client:
        records = [
            *_all(client.read_flow_runs),
            *_all(client.read_task_runs),
            *_all(client.read_artifacts),
        ]
        parts = [json.dumps(r.model_dump(mode="json"), default=str) for r in records]
        parts += [log.message for log in _all(client.read_logs)]
    return "\n".join(parts)
