"""A pass-through tar reader: hands every byte on unchanged while noting a few members on the way.

``pg_basebackup --format=tar --pgdata=-`` writes the data directory as one tar to stdout. The backup
needs facts from inside it (``backup_label``: start LSN and timeline; ``global/pg_control``: system id;
``PG_VERSION``; ``backup_manifest``, the last member) without a local copy of the data directory, so
this reader walks the 512-byte headers (ustar, GNU long names ``L``, pax ``x``) as the stream passes
and keeps only the members asked for (small ones in memory; the manifest in a spooled temp file).
"""

from __future__ import annotations

import tempfile
from typing import IO, BinaryIO

BLOCK = 512
SPOOL_MEMORY = 16 * 1024 * 1024


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    if not text:
        return 0
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    return int(text, 8)


class TarScanner:
    """File-like wrapper: ``read(n)`` returns the inner stream's bytes; members in ``keep`` are captured."""

    def __init__(self, inner: BinaryIO, keep: dict[str, int | None]) -> None:
        """``keep`` maps member names to the most bytes to capture (None: all, spooled)."""
        self.inner = inner
        self.keep = keep
        self.captured: dict[str, bytes] = {}
        self.spooled: dict[str, IO[bytes]] = {}
        self.members = 0
        self.ended = False  # two zero blocks seen
        self._head = bytearray()
        self._remaining = 0  # data bytes of the current member still to come
        self._padding = 0
        self._current: str | None = None
        self._sink: IO[bytes] | bytearray | None = None
        self._limit: int | None = None
        self._long_name: str | None = None
        self._pax_name: str | None = None
        self._meta: bytearray | None = None  # collecting a GNU L / pax x body
        self._meta_kind = ""
        self._zero_blocks = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        if data:
            self._feed(memoryview(data))
        return data

    def close(self) -> None:
        for fh in self.spooled.values():
            fh.close()

    def manifest_bytes(self, name: str = "backup_manifest") -> bytes | None:
        fh = self.spooled.get(name)
        if fh is None:
            return self.captured.get(name)
        fh.seek(0)
        return fh.read()

    # --- state machine ------------------------------------------------------------------------------
    def _feed(self, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            if self._remaining:
                take = min(self._remaining, len(view) - pos)
                self._consume(view[pos : pos + take])
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._end_member()
                continue
            if self._padding:
                take = min(self._padding, len(view) - pos)
                self._padding -= take
                pos += take
                continue
            take = min(BLOCK - len(self._head), len(view) - pos)
            self._head += view[pos : pos + take]
            pos += take
            if len(self._head) == BLOCK:
                block = bytes(self._head)
                self._head.clear()
                self._header(block)

    def _header(self, block: bytes) -> None:
        if self.ended:
            return
        if block == b"\0" * BLOCK:
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self.ended = True
            return
        self._zero_blocks = 0
        size = _octal(block[124:136])
        kind = block[156:157]
        name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if block[257:262] == b"ustar":
            prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
                name = f"{prefix}/{name}"
        self._padding_for = (-size) % BLOCK
        if kind in (b"L", b"x", b"g"):
            self._meta = bytearray()
            self._meta_kind = kind.decode()
            self._start_data(size, None)
            return
        if self._long_name is not None:
            name, self._long_name = self._long_name, None
        if self._pax_name is not None:
            name, self._pax_name = self._pax_name, None
        name = name.removeprefix("./")
        self.members += 1
        if kind in (b"0", b"\0", b"7") and name in self.keep:
            limit = self.keep[name]
            self._current = name
            self._limit = limit
            if limit is None:
                self._sink = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - kept for the caller
                self.spooled[name] = self._sink
            else:
                self._sink = bytearray()
        self._start_data(size if kind not in (b"5", b"2", b"1") else 0, self._current)

    def _start_data(self, size: int, current: str | None) -> None:
        self._remaining = size
        self._padding_after = self._padding_for
        if size == 0:
            self._end_member()

    def _consume(self, data: memoryview) -> None:
        if self._meta is not None:
            if len(self._meta) < 1 << 20:
                self._meta += data
            return
        if self._sink is None:
            return
        if isinstance(self._sink, bytearray):
            room = (self._limit or 0) - len(self._sink)
            if room > 0:
                self._sink += data[:room]
        else:
            self._sink.write(data)

    def _end_member(self) -> None:
        self._padding = self._padding_after
        if self._meta is not None:
            body = bytes(self._meta)
            if self._meta_kind == "L":
                self._long_name = body.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif self._meta_kind == "x":
                for rec in _pax_records(body):
                    if rec[0] == "path":
                        self._pax_name = rec[1]
            self._meta = None
            return
        if self._current is not None and isinstance(self._sink, bytearray):
            self.captured[self._current] = bytes(self._sink)
        self._current = None
        self._sink = None


def _pax_records(body: bytes) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(body[pos:space])
        except ValueError:
            break
        rec = body[space + 1 : pos + length - 1].decode("utf-8", "replace")
        key, _, value = rec.partition("=")
        out.append((key, value))
        pos += length
    return out
