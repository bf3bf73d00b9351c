"""Read ahead of the consumer: a source's next batches are read in a thread of their own while
the previous ones are being encoded.

The database driver (ADBC: binary COPY decoded into Arrow in C++) and the Parquet encoder both
release the GIL, so a reader thread and the writer overlap on two cores instead of taking
turns. Memory stays bounded: at most `depth` batches wait in the queue, plus the one the reader
is reading and the one the writer is writing.

The source iterator is only ever advanced, and closed, by the reader thread: a generator that
holds a database session runs its cleanup there (its `finally`), before `close()` returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.1  # how often a blocked put or get looks at the other side


class Prefetch(Generic[T]):
    """Iterate `source` up to `depth` items ahead, in a reader thread. Use it as a context
    manager (or call `close()`): leaving early stops the reader and closes `source`.

    An exception raised by `source` is raised by `__next__` in the consumer's thread, after
    the items read before it."""

    def __init__(self, source: Iterator[T], *, depth: int = 2, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self._source = source
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._source:
                if not self._put(_ITEM, item):
                    return  # the consumer left: `finally` closes the source
            self._put(_END, None)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_ERROR, exc)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:  # a cleanup error reaches the consumer too
                    self._put(_ERROR, exc)

    def _put(self, kind: int, value: object) -> bool:
        """Queue one entry unless the consumer has left; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    # cannot happen unless the thread was killed: never wait forever
                    self._finished = True
                    raise RuntimeError("the reader thread ended without a last entry") from None
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self._finished = True
        self._thread.join()
        if kind == _ERROR:
            assert isinstance(value, BaseException)
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the reader and wait for it: the source is closed when this returns. A read in
        progress is finished first (bounded by the source's own timeouts)."""
        self._finished = True
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(timeout=_POLL_S)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
