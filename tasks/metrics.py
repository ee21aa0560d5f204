"""Push the repository's metrics to the Pushgateway named in the repository block, at the end of every run.

The one place the Prefect layer touches metrics: ``@pushes_metrics`` under ``@flow`` on each backup, verify,
drill and prune flow. Success or failure, the run ends by reading the figures from the repository
(:func:`seedvault.metrics.collect`: the same as ``seedvault metrics``) and pushing them (job ``seedvault``,
one group per store and database). A failed backup attempt is in the figures because the engine audits it
(``seedvault_backup_failures_total``). Without ``pushgateway_url`` in the block nothing happens; a failing
push (gateway down, repository unreachable) is a warning in the run's log, never a failed run.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (a flow's .fn() in tests): the module logger
        return logging.getLogger("seedvault.metrics")


def push_repository_metrics(repository: str, key: str) -> int | None:
    """Collect and push for the named blocks; the number of groups pushed, or None (not configured, failed)."""
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository
    from seedvault import metrics
    from seedvault.audit import error_line

    try:
        repo_block = SeedvaultRepository.load(repository)
        url = repo_block.pushgateway_url
        if not url:
            return None
        repo = repo_block.open(SeedvaultEncryptionKey.load(key).key_source())
        pushed = metrics.push(metrics.collect(repo, prices=repo_block.settings().prices), url)
    except Exception as exc:  # noqa: BLE001 - metrics never fail a backup
        _logger().warning("seedvault: warning: metrics were not pushed: %s", error_line(exc))
        return None
    _logger().info("metrics: %d groups pushed to %s", pushed, metrics.safe_url(url))
    return pushed


def pushes_metrics(fn: F) -> F:
    """Decorate a flow function (under ``@flow``) that takes ``repository`` and ``key`` block names."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            push_repository_metrics(bound.arguments["repository"], bound.arguments["key"])

    return wrapper  # type: ignore[return-value]
