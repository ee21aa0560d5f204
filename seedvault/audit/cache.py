"""What this host remembers of a repository's audit log (best effort, under the user's cache directory).

The newest event it wrote or verified (the removed-tail check) and the events it verified (so that ``list``
and ``show`` read only what is new): FORMAT.md 7.4.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seedvault" / "audit"


class Seen:
    """``<cache>/seedvault/audit/<repository id>.json``: {"seq": N, "sha256": hash of event N's bytes}.

    Best effort: an unwritable cache only costs a full listing to find the tail, and the removed-tail check.
    """

    def __init__(self, repo_id: str) -> None:
        self.path = _cache_dir() / f"{repo_id}.json"

    def read(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.path.read_text())
            seq, digest = data["seq"], data["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if isinstance(seq, int) and seq > 0 and isinstance(digest, str) and len(digest) == 64:
            return seq, digest
        return None

    def update(self, seq: int, digest: str) -> None:
        """Remember (seq, digest) if it is newer than what is remembered."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path.parent / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                known = self.read()
                if known is not None and known[0] >= seq:
                    return
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump({"seq": seq, "sha256": digest}, fh)
                os.replace(tmp, self.path)
        except OSError:
            pass


class EventCache:
    """``<cache>/seedvault/audit/<repository id>.events``: the stored bytes of events 1..K this host verified,
    one per line (canonical JSON has no line break). Best effort, like :class:`_Seen`."""

    def __init__(self, repo_id: str) -> None:
        self.path = _cache_dir() / f"{repo_id}.events"

    def read(self) -> list[bytes]:
        try:
            return self.path.read_bytes().splitlines()
        except OSError:
            return []

    def store(self, stored: dict[int, bytes | None]) -> None:
        """Remember the verified events 1..max(stored): appended when the file holds a prefix, else rewritten."""
        events = [stored.get(s) for s in range(1, max(stored, default=0) + 1)]
        if not events or any(d is None or b"\n" in d for d in events):
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path.parent / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read()
                if len(current) >= len(events):
                    return
                prefix = current == events[: len(current)]
                target = self.path if prefix else self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if prefix else os.O_TRUNC)
                with os.fdopen(os.open(target, flags, 0o600), "ab") as fh:
                    fh.write(b"".join(d + b"\n" for d in events[len(current) if prefix else 0 :] if d is not None))
                if not prefix:
                    os.replace(target, self.path)
        except OSError:
            pass
