"""``pin`` / ``unpin``: keep one backup whatever the retention policy, with who, why and until when.

A pin is nothing but an audit event (seedvault.audit): manifests stay immutable, and the log says who pinned
what and why. So a pin that cannot be recorded is refused (raised), unlike the audit event of any other
operation, which only warns when it cannot be appended.
"""

from __future__ import annotations

from datetime import UTC, datetime

from seedvault import audit
from seedvault.errors import UsageError
from seedvault.repository import Repository

MAX_REASON = 300


def _reason(text: str | None) -> str:
    reason = " ".join((text or "").split())
    if not reason:
        raise UsageError("a reason is required (--reason TEXT): the audit log records who pinned what and why")
    if len(reason) > MAX_REASON:
        raise UsageError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    return reason


def pin(repo: Repository, backup_id: str, reason: str, until: datetime | None = None) -> audit.Event:
    """Pin a complete backup (its manifest must authenticate); pinning it again replaces the pin."""
    reason = _reason(reason)
    if until is not None and until <= datetime.now(UTC):
        raise UsageError(f"--until {until:%Y-%m-%dT%H:%M:%SZ} is in the past")
    repo.manifest(backup_id)  # BackupNotFound (12) / AuthenticationFailed (21) before anything is recorded
    details: dict[str, str | None] = {
        "reason": reason,
        "until": until.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if until else None,
    }
    return audit.append(repo, "pin", backup_ids=[backup_id], details=details)


def unpin(repo: Repository, backup_id: str, reason: str) -> audit.Event:
    """Remove a backup's pin (UsageError when it has none)."""
    reason = _reason(reason)
    current = audit.state(repo).pins.get(backup_id)
    if current is None:
        raise UsageError(f"backup {backup_id} is not pinned", hint="'seedvault show ID' shows a backup's pin")
    return audit.append(repo, "unpin", backup_ids=[backup_id], details={"reason": reason, "pin_seq": current.seq})
