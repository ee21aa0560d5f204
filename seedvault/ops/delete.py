"""``delete``: remove one complete backup, manifest first, after the checks that keep it when it is needed.

Refused (nothing removed): a backup that is the parent of another (a Neo4j DIFF chain) or a member of a platform
group, one a running operation names in its lease, one pinned in the audit log, one its manifest records under
S3 Object Lock.
The deletion is audited (seedvault.audit).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from seedvault import audit, leases, storagecost
from seedvault.errors import LockHeld, UsageError
from seedvault.repository import Repository

log = logging.getLogger(__name__)


def check_deletable(repo: Repository, backup_id: str, *, lease_stale: timedelta = leases.DEFAULT_STALE) -> None:
    """Raise when ``backup_id`` must not be deleted (not found, a parent, leased, pinned)."""
    from seedvault.catalog import Catalog

    storagecost.refuse_locked_delete(repo._require_manifest(backup_id), backup_id)
    catalog = Catalog(repo, authenticate=repo.key_source is not None)
    children = catalog.children(backup_id)
    if children:
        raise UsageError(f"backup {backup_id} is the parent of {', '.join(children)}; delete those first")
    if repo.key_source is not None:
        from seedvault.ops.platform import members_of

        groups = [gid for gid, body in catalog.bodies(lambda b: backup_id in members_of(b))]
        if groups:
            raise UsageError(f"backup {backup_id} is a member of platform group {', '.join(groups)}; delete that first")
    holder = leases.read_leases(repo, stale_after=lease_stale).held_ids().get(backup_id)
    if holder is not None:
        raise LockHeld(
            f"backup {backup_id} is in use by {holder.describe()}; not deleted",
            hint="wait for it to finish; 'seedvault leases' shows who holds what",
        )
    if repo.key_source is not None:  # without a key the log cannot be authenticated: nothing to trust
        state, _ = audit.state_or_empty(repo)
        if state.problems:
            log.warning("seedvault: warning: the audit log is not intact (%s); pins were read from its authentic "
                        "events only: run 'seedvault audit'", state.problems[0])  # fmt: skip
        pinned = state.pins.get(backup_id)
        if pinned is not None:
            until = f" until {pinned.until:%Y-%m-%d %H:%M}Z" if pinned.until else ""
            raise UsageError(
                f"backup {backup_id} is pinned by {pinned.by}{until}: {pinned.reason}; not deleted",
                hint=f"'seedvault unpin {backup_id} --reason ...' first",
            )


def delete_backup(repo: Repository, backup_id: str) -> None:
    """Delete it (manifest first, then data and key objects) and record a ``delete`` event."""
    with audit.audited(repo, "delete", [backup_id]):
        repo.delete_backup(backup_id)
