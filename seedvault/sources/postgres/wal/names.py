"""WAL file names, LSN arithmetic, timeline history files and the WAL page header.

Stdlib only: the archive client and the restore planner both use it, and neither should pay for more.

PostgreSQL names a segment ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, then the segment number split into
"log" and "seg" parts of ``0x100000000 // wal_segment_size`` segments each). Besides segments the
archiver hands over ``<seg>.partial`` (last segment of an old timeline after a promotion),
``<TLI>.history`` (timeline history) and ``<seg>.<offset>.backup`` (backup history files).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from seedvault.errors import ForeignWal, FormatError, UsageError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

SEGMENT_RE = re.compile(r"\A([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\Z")
PARTIAL_RE = re.compile(r"\A([0-9A-F]{24})\.partial\Z")
HISTORY_RE = re.compile(r"\A([0-9A-F]{8})\.history\Z")
BACKUP_RE = re.compile(r"\A([0-9A-F]{24})\.([0-9A-F]{8})\.backup\Z")
LSN_RE = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")

# XLOG_PAGE_MAGIC per major (src/include/access/xlog_internal.h of each release).
PAGE_MAGIC = {13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116}
# XLogLongPageHeaderData: magic u16, info u16, tli u32, pageaddr u64, rem_len u32, (pad), sysid u64,
# seg_size u32, blcksz u32 - little-endian on every platform we run on.
LONG_HEADER = struct.Struct("<HHIQI4xQII")
XLP_LONG_HEADER = 0x0002


@dataclass(frozen=True)
class WalName:
    """One file the archiver may hand us, classified."""

    name: str
    kind: str  # segment | partial | history | backup
    timeline: int
    segment: str | None = None  # the 24-hex segment name for segment/partial/backup

    def segno(self, seg_size: int) -> int:
        assert self.segment is not None
        return segno_of(self.segment, seg_size)


def classify(name: str) -> WalName:
    """What kind of WAL file ``name`` is; anything else is a usage error (never archived under a guess)."""
    if SEGMENT_RE.fullmatch(name):
        return WalName(name, "segment", int(name[:8], 16), name)
    if m := PARTIAL_RE.fullmatch(name):
        return WalName(name, "partial", int(name[:8], 16), m.group(1))
    if m := HISTORY_RE.fullmatch(name):
        return WalName(name, "history", int(m.group(1), 16))
    if m := BACKUP_RE.fullmatch(name):
        return WalName(name, "backup", int(name[:8], 16), m.group(1))
    raise UsageError(f"{name!r} is not a WAL file name (segment, .partial, .history or .backup)")


def segs_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    per = segs_per_xlogid(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def segno_of(segment: str, seg_size: int) -> int:
    m = SEGMENT_RE.fullmatch(segment)
    if not m:
        raise UsageError(f"{segment!r} is not a WAL segment name")
    per = segs_per_xlogid(seg_size)
    log, seg = int(m.group(2), 16), int(m.group(3), 16)
    if seg >= per:
        raise FormatError(f"{segment!r} does not exist with {seg_size}-byte segments")
    return log * per + seg


def parse_lsn(text: str) -> int:
    m = LSN_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"{text!r} is not an LSN (expected e.g. 0/3000060)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segno_of_lsn(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


@dataclass(frozen=True)
class HistoryEntry:
    """A timeline of a history file: it was current for LSNs in [begin, end) (end None = still current)."""

    tli: int
    begin: int
    end: int | None


def parse_history(text: str, tli: int) -> list[HistoryEntry]:
    """The ancestry of timeline ``tli`` from its ``.history`` file, oldest first, ``tli`` itself last.

    Each line is ``parentTLI <tab> switchpoint <tab> reason``; blank lines and ``#`` comments are skipped
    (the format of PostgreSQL's ``readTimeLineHistory``).
    """
    entries: list[HistoryEntry] = []
    begin = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        try:
            parent, switch = int(parts[0]), parse_lsn(parts[1])
        except (IndexError, ValueError, UsageError):
            raise FormatError(f"timeline history {tli:08X}.history has an invalid line: {line[:80]!r}") from None
        if entries and parent <= entries[-1].tli:
            raise FormatError(f"timeline history {tli:08X}.history is not in ascending order")
        entries.append(HistoryEntry(parent, begin, switch))
        begin = switch
    if entries and tli <= entries[-1].tli:
        raise FormatError(f"timeline history {tli:08X}.history lists timeline {entries[-1].tli} as an ancestor")
    entries.append(HistoryEntry(tli, begin, None))
    return entries


def timeline_of_segment(ancestry: list[HistoryEntry], segno: int, seg_size: int) -> int:
    """Which timeline's file holds segment ``segno`` when replaying along ``ancestry``.

    PostgreSQL reads a segment from the newest timeline whose begin lies in or before it (the segment
    holding a switch point is copied onto the new timeline at the switch).
    """
    best = ancestry[0].tli
    for e in ancestry:
        if segno_of_lsn(e.begin, seg_size) <= segno:
            best = e.tli
    return best


@dataclass(frozen=True)
class PageHeader:
    magic: int
    tli: int
    pageaddr: int
    system_id: int
    seg_size: int
    block_size: int


def read_page_header(head: bytes, name: str) -> PageHeader:
    """The long header of a segment's first page (the first 40 bytes of the file)."""
    if len(head) < LONG_HEADER.size:
        raise FormatError(f"WAL file {name} is too short to be a segment ({len(head)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = LONG_HEADER.unpack_from(head)
    if not info & XLP_LONG_HEADER:
        raise FormatError(f"WAL file {name} does not start with a long page header; not a WAL segment")
    return PageHeader(magic, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment_header(
    head: bytes, name: WalName, *, system_id: int, seg_size: int | None = None, pg_major: int | None = None
) -> PageHeader:
    """Refuse a segment that belongs to another cluster, position or version than its name says."""
    hdr = read_page_header(head, name.name)
    if hdr.system_id != system_id:
        raise ForeignWal(
            f"WAL file {name.name} belongs to database system {hdr.system_id}, not {system_id}",
            hint="is this server archiving to the right repository?",
        )
    size = seg_size or hdr.seg_size
    if hdr.seg_size != size or size & (size - 1) or not 1 << 20 <= size <= 1 << 30:
        raise FormatError(f"WAL file {name.name} has segment size {hdr.seg_size}, expected {size}")
    if hdr.pageaddr != name.segno(size) * size:
        raise ForeignWal(
            f"WAL file {name.name} holds the segment at {format_lsn(hdr.pageaddr)}, not the one its name says"
        )
    if hdr.tli > name.timeline:
        raise ForeignWal(f"WAL file {name.name} is from timeline {hdr.tli}, later than its name's timeline")
    if pg_major is not None and PAGE_MAGIC.get(pg_major) not in (None, hdr.magic):
        raise ForeignWal(f"WAL file {name.name} has page magic {hdr.magic:#06x}, not PostgreSQL {pg_major}'s")
    return hdr


def major_of_magic(magic: int) -> int | None:
    for major, value in PAGE_MAGIC.items():
        if value == magic:
            return major
    return None


def system_id_from_pg_control(data: bytes) -> int:
    """``global/pg_control`` begins with the 64-bit system identifier."""
    if len(data) < 8:
        raise FormatError("global/pg_control is too short")
    return struct.unpack_from("<Q", data)[0]
