"""Reading back what the flows left on the Prefect API: runs, task runs, artifacts, logs, parameters."""

from __future__ import annotations

import json
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


def task_runs(flow_run_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )


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


def everything_stored() -> str:
    """All flow runs (with parameters and state messages), task runs, logs and artifacts, as one text."""
    with get_client(sync_client=True) as client:
        parts: list[str] = []
        runs = client.read_flow_runs(limit=200)
        parts += [json.dumps(r.model_dump(mode="json"), default=str) for r in runs]
        parts += [json.dumps(t.model_dump(mode="json"), default=str) for t in client.read_task_runs(limit=200)]
        parts += [log.message for log in client.read_logs(limit=200)]
        parts += [json.dumps(a.model_dump(mode="json"), default=str) for a in client.read_artifacts(limit=200)]
    return "\n".join(parts)
