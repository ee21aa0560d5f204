"""Which neo4j-admin dialect a server speaks.

Neo4j 4.4 has flat commands (``neo4j-admin dump --database=X --to=FILE``); 5.x and the calendar releases
(2025.01 onwards, the same tool as 5.26+) group them (``neo4j-admin database dump X --to-path=DIR``) and
can stream dumps through stdout/stdin. Older releases (3.5, 4.0-4.3) are out of support upstream and
refused here with the version named, rather than driven with guessed syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seedvault.errors import SourceError

_VERSION_RE = re.compile(r"(?<![\d.])(\d{1,4})\.(\d{1,2})(?:\.(\d{1,3}))?")
DIALECT_44 = "4.4"
DIALECT_5 = "5"


@dataclass(frozen=True)
class Neo4jVersion:
    major: int
    minor: int
    patch: int
    edition: str | None = None  # community | enterprise, when known

    @property
    def text(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def calendar(self) -> bool:
        return self.major >= 2025

    @property
    def dialect(self) -> str:
        if self.major == 4 and self.minor == 4:
            return DIALECT_44
        if self.major == 5 or self.calendar:
            return DIALECT_5
        raise SourceError(
            f"Neo4j {self.text} is not supported (neo4j-admin dialects known: 4.4, 5.x, 2025.x and later)",
            hint="upgrade to 4.4 or newer, or back up with that version's own neo4j-admin by hand",
        )

    @property
    def streams(self) -> bool:
        """Dumps to stdout and loads from stdin (5.x and calendar versions)."""
        return self.dialect == DIALECT_5

    @property
    def point_in_time(self) -> bool:
        """``database restore --restore-until`` (Enterprise, 5.x and later)."""
        return self.dialect == DIALECT_5


def parse_version(text: str, edition: str | None = None) -> Neo4jVersion:
    """The version in ``neo4j-admin --version`` output (``neo4j-admin 4.4.30``, ``5.26.1``, ``2025.01.0``)."""
    m = _VERSION_RE.search(text or "")
    if not m:
        raise SourceError(f"cannot tell the Neo4j version from {(text or '').strip()[:80]!r}")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if edition is None:
        low = (text or "").lower()
        edition = "enterprise" if "enterprise" in low else "community" if "community" in low else None
    return Neo4jVersion(major, minor, patch, edition)
