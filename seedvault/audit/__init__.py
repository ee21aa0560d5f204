"""The audit log: an append-only, authenticated, hash-chained record of everything done to the repository.

Manifests are immutable (Object Lock friendly), so what changes about a backup later (verified, restore-tested,
pinned, deleted) lives here, as events (FORMAT.md "Audit log")::

    v1/audit/events/<seq:012d>.json    one event: canonical JSON, seq 1, 2, 3... with no gap

Each event names the previous one by the SHA-256 of its stored bytes (``prev``) and carries an HMAC-SHA256
(``mac``) under the repository's audit key (``repokey.subkey(repo, "audit")``: derived from the repository
secret, so it survives key rotation as data keys do). So an edited event fails its MAC, a removed one leaves a
gap in ``seq``, a reordered pair breaks ``prev``, and nobody without a master key can add one. What a hash
chain cannot show is a removed *tail* (the last events gone, the rest intact): each host remembers the newest
event it wrote or verified (seq and hash, in its cache directory) and ``verify_chain`` reports a log that is
now shorter, or whose event at that seq changed.

Events are written with no overwrite: two writers racing for seq N get one winner, the loser reads the tail
again and takes N+1. Auditing never fails an operation: an event that cannot be appended (read-only
credentials during an outage, no master key) is a warning on stderr saying the operation was not audited.
Events never hold secrets: the details are counts, sizes, ids and one-line error texts, which seedvault's
errors already keep free of key material.

The package: :mod:`~seedvault.audit.events` (format, append), :mod:`~seedvault.audit.chain` (verify),
:mod:`~seedvault.audit.state` (pins, last verified, last restore-tested), :mod:`~seedvault.audit.cache` (what
this host remembers).
"""

from seedvault.audit.chain import AuditReport, verify_chain
from seedvault.audit.events import (
    EVENTS,
    FORMAT,
    GENESIS,
    RESULTS,
    VERSION,
    Audited,
    Event,
    append,
    audited,
    error_line,
    event_key,
    parse_time,
    record,
    who,
)
from seedvault.audit.state import (
    AuditState,
    Outcome,
    Pin,
    restore_operation,
    state,
    state_or_empty,
)

__all__ = [
    "EVENTS",
    "FORMAT",
    "GENESIS",
    "RESULTS",
    "VERSION",
    "AuditReport",
    "AuditState",
    "Audited",
    "Event",
    "Outcome",
    "Pin",
    "append",
    "audited",
    "error_line",
    "event_key",
    "parse_time",
    "record",
    "restore_operation",
    "state",
    "state_or_empty",
    "verify_chain",
    "who",
]
