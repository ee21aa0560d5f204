"""Run an iterator in a background thread, handing items over through a bounded queue.

Used on the restore path so reading + hashing + decrypting (one thread) overlaps with decompressing
+ writing (the caller's thread) on the other core. The queue bound keeps memory at ``depth`` items.
Exceptions raised by the producer are re-raised in the consumer at the position they occurred, and
closing the consumer (e.g. the restore fails downstream) stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(source: Iterable[T], depth: int = 8) -> Iterator[T]:
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
        close = getattr(source, "close", None)
        if close is not None:
            close()
