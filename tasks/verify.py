"""``verify`` as an ordinary task: read every byte of a backup back through the authenticators.

Unlike the streaming stages it reads a committed, immutable backup, so retrying it alone is safe; it has its
own retry policy for storage hiccups (only those: a mismatch or an authentication failure is the same on
every read, and retrying it only delays the failure and its message). A backup that fails verification
stays in the repository (it is complete, and an operator may want to inspect it) but the flow fails with the
first problem named.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from seedvault.errors import VerificationFailed
from seedvault.ops.verify import verify_backup
from seedvault.repository import Repository
from tasks.postgres import transient_only


@task(
    name="verify-backup",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def verify_backup_task(repo: Repository, backup_id: str) -> dict[str, Any]:
    """Read the whole backup back; raise :class:`VerificationFailed` naming the first problem."""
    started = time.perf_counter()
    result = verify_backup(repo, backup_id)
    seconds = round(time.perf_counter() - started, 3)
    if not result.ok:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise VerificationFailed(f"backup {backup_id} failed verification: {result.problems[0]}{more}")
    get_run_logger().info(
        "verified %s: %d objects, %d bytes in %.3f s", backup_id, result.objects, result.raw_bytes, seconds
    )
    return {"objects": result.objects, "bytes": result.raw_bytes, "seconds": seconds}
