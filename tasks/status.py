"""The status view as a Prefect artifact: one markdown artifact, always under :data:`STATUS_KEY`.

Every seedvault flow ends with :func:`publish_status` as a hook (``on_completion``, ``on_failure``,
``on_crashed``), so the view is refreshed whatever the outcome: it is computed from the repository itself
(:func:`seedvault.ops.status.compute_status`), never from the run that just ended, so a failed run cannot
overwrite it with anything but the truth. Failure artifacts have keys of their own
(``seedvault-failure-<flow>-<subject>``, :func:`tasks.reports.failure_key`): a success artifact and the
status are never replaced by a failure.

The hook loads the run's ``repository`` and ``key`` blocks by the names in its parameters. It never fails the
run and never masks its failure: a problem is one warning line (the error's class and one-line text, which
seedvault keeps free of secrets).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_logger

from seedvault.config import Settings
from seedvault.errors import SeedvaultError, SizeAnomaly
from seedvault.ops.status import StatusReport, compute_status, raise_if_anomalous
from seedvault.ops.status_markdown import render_markdown
from seedvault.repository import Repository

STATUS_KEY = "seedvault-status"

log = get_logger("seedvault.flows")


def publish_status_artifact(repo: Repository, settings: Settings | None = None) -> tuple[UUID, StatusReport]:
    report = compute_status(repo, settings)
    state = "OK" if report.ok else f"{len(report.alerts)} alert(s)"
    artifact = create_markdown_artifact(
        render_markdown(report), key=STATUS_KEY, description=f"seedvault status of {report.repository}: {state}"
    )
    return artifact, report


def publish_status(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: refresh the ``seedvault-status`` artifact from the run's repository (never raises)."""
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository

    params = getattr(flow_run, "parameters", None) or {}
    if not params.get("repository") or not params.get("key"):
        return
    try:
        repo_block = SeedvaultRepository.load(params["repository"])
        repo = repo_block.open(SeedvaultEncryptionKey.load(params["key"]).key_source())
        publish_status_artifact(repo, repo_block.settings())
    except SeedvaultError as exc:
        log.warning("the seedvault-status artifact was not updated: %s", exc.one_line())
    except Exception as exc:  # noqa: BLE001 - a hook must not replace the flow's outcome
        log.warning("the seedvault-status artifact was not updated: %s", type(exc).__name__)


def size_anomaly_failure(repo: Repository, settings: Settings | None, backup_id: str) -> SizeAnomaly | None:
    """The :class:`SizeAnomaly` (operator one-liner) to fail a backup run with, or None.

    Decided: a backup flow *fails* on an anomalous size, after the backup is committed, verified and its
    artifact published, and *before* the prune: the backup is kept, and no older backup is deleted on the
    strength of a suspicious new one. The failure then notifies like any other. A catalog that cannot be
    read here is a warning, never a failure of a good backup.
    """
    try:
        raise_if_anomalous(repo, backup_id, settings)
    except SizeAnomaly as exc:
        return SizeAnomaly(exc.one_line())
    except SeedvaultError as exc:
        log.warning("the size of backup %s was not checked: %s", backup_id, exc.one_line())
    return None
