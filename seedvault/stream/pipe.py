"""A bounded in-process pipe of byte pieces joining two pipeline stages.

Stages (read, compress, encrypt, upload) run concurrently, as threads in the CLI or as concurrently
submitted Prefect tasks, and pass pieces through pipes. The bound keeps memory at ``depth`` pieces per
pipe whatever the stream size. Failure travels both ways: a writer that fails calls :meth:`fail` and the
reader gets :class:`PipeBroken` with the cause; a reader that fails calls :meth:`abandon` and the
writer's next :meth:`put` raises. So one failing stage stops the whole stream instead of leaving a
stage blocked forever, and a consumer can never mistake a truncated stream for a complete one: only
:meth:`close` signals a clean end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from seedvault.errors import PipeBroken, SeedvaultError

_EOF = object()


class Pipe:
    def __init__(self, depth: int = 8, name: str = "pipe") -> None:
        self.name = name
        self._q: queue.Queue = queue.Queue(depth)
        self._abandoned: BaseException | None = None
        self._closed = threading.Event()
        self._failure: BaseException | None = None
        self.bytes = 0

    # writer side ------------------------------------------------------------------------------------
    def put(self, data: bytes | memoryview) -> None:
        if self._abandoned is not None:
            raise self._abandoned
        if self._closed.is_set():
            if self._failure is not None:  # already failed on the writer side: that is the story, not the write
                if isinstance(self._failure, SeedvaultError) and not isinstance(self._failure, PipeBroken):
                    raise self._failure
                raise PipeBroken(f"{self.name}: {self._failure}") from self._failure
            raise PipeBroken(f"{self.name}: write after close")
        while True:
            if self._abandoned is not None:
                raise self._abandoned
            try:
                self._q.put(data, timeout=0.1)
                self.bytes += len(data)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Clean end of stream."""
        self._put_final(_EOF)

    def fail(self, exc: BaseException) -> None:
        """The writer failed: the reader will raise instead of seeing an end of stream."""
        if not self._closed.is_set():
            self._failure = exc
        self._put_final(exc)

    def _put_final(self, item: object) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        while self._abandoned is None:
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # reader side ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        while True:
            if self._abandoned is not None:
                raise self._abandoned
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _EOF:
                return
            if isinstance(item, BaseException):
                if isinstance(item, SeedvaultError) and not isinstance(item, PipeBroken):
                    raise item
                raise PipeBroken(f"{self.name}: upstream stage failed: {item}") from item
            yield item

    def abandon(self, exc: BaseException) -> None:
        """The reader failed: unblock and fail the writer."""
        if self._abandoned is None:
            self._abandoned = exc if isinstance(exc, PipeBroken) else PipeBroken(f"{self.name}: downstream failed")
            self._abandoned.__cause__ = exc
        # Drain so a writer blocked on a full queue wakes up and sees the flag.
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return
