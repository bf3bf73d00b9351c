"""The synchronous client: the async client driven on a private event loop thread.

One implementation of every call, its errors and the watch resume (aio.py); this facade only
carries calls across to the loop and results back, so both clients behave alike."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

from sluiceway.client.aio import AsyncClient, Export, Status
from sluiceway.client.options import ClientOptions
from sluiceway.common.domain.events import ExportSpec
from sluiceway.v1 import control_pb2, events_pb2, tracker_pb2

T = TypeVar("T")


class Client:
    """The blocking twin of `AsyncClient`: same methods, same arguments, same errors; the
    iterators are plain iterators. Usable from any thread, also one running an event loop
    (the calls block it). Close it, or use `with`, to close the channels and the loop thread."""

    def __init__(
        self, control: str = "", tracker: str = "", options: ClientOptions | None = None
    ) -> None:
        self._aio = AsyncClient(control, tracker, options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sluiceway-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def control_addr(self) -> str:
        return self._aio.control_addr

    @property
    def tracker_addr(self) -> str:
        return self._aio.tracker_addr

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._aio.close())
            self._run(self._loop.shutdown_asyncgens())  # unfinished iterators end their calls
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # e.g. KeyboardInterrupt while blocked: stop the call on the loop before going on
            if not future.done():
                future.cancel()
                concurrent.futures.wait([future], timeout=5)
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(agen)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if not self._loop.is_closed():
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    self._run(aclose())

    # ---- Control -------------------------------------------------------------------------------

    def submit(
        self,
        export: Export,
        *,
        requested_by: str = "",
        options: Mapping[str, str] | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> control_pb2.SubmitRunResponse:
        """See AsyncClient.submit."""
        return self._run(
            self._aio.submit(
                export,
                requested_by=requested_by,
                options=options,
                priority=priority,
                timeout_s=timeout_s,
            )
        )

    def plan(
        self, export: Export, *, timeout_s: float | None = None
    ) -> control_pb2.PlanRunResponse:
        """See AsyncClient.plan."""
        return self._run(self._aio.plan(export, timeout_s=timeout_s))

    def cancel(
        self,
        run_id: str,
        *,
        reason: str = "",
        requested_by: str = "",
        timeout_s: float | None = None,
    ) -> control_pb2.CancelRunResponse:
        """See AsyncClient.cancel."""
        return self._run(
            self._aio.cancel(run_id, reason=reason, requested_by=requested_by, timeout_s=timeout_s)
        )

    def apply_schedules(
        self,
        specs: Iterable[ExportSpec | events_pb2.ExportSpec],
        *,
        applied_by: str = "",
        timeout_s: float | None = None,
    ) -> control_pb2.ApplySchedulesResponse:
        """See AsyncClient.apply_schedules."""
        return self._run(
            self._aio.apply_schedules(specs, applied_by=applied_by, timeout_s=timeout_s)
        )

    def list_schedules(
        self, *, upcoming: int = 3, timeout_s: float | None = None
    ) -> control_pb2.ListSchedulesResponse:
        """See AsyncClient.list_schedules."""
        return self._run(self._aio.list_schedules(upcoming=upcoming, timeout_s=timeout_s))

    # ---- Tracker -------------------------------------------------------------------------------

    def get(
        self,
        run_id: str,
        *,
        min_seq: int = 0,
        wait_s: float = 0.0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.RunSummary:
        """See AsyncClient.get."""
        return self._run(self._aio.get(run_id, min_seq=min_seq, wait_s=wait_s, timeout_s=timeout_s))

    def list_runs(
        self,
        *,
        export_name: str = "",
        statuses: Iterable[Status] = (),
        requested_after: datetime | None = None,
        requested_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> tracker_pb2.ListRunsResponse:
        """See AsyncClient.list_runs."""
        return self._run(
            self._aio.list_runs(
                export_name=export_name,
                statuses=statuses,
                requested_after=requested_after,
                requested_before=requested_before,
                page_size=page_size,
                page_token=page_token,
                timeout_s=timeout_s,
            )
        )

    def iter_runs(
        self,
        *,
        export_name: str = "",
        statuses: Iterable[Status] = (),
        requested_after: datetime | None = None,
        requested_before: datetime | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[tracker_pb2.RunSummary]:
        """See AsyncClient.iter_runs."""
        return self._iterate(
            self._aio.iter_runs(
                export_name=export_name,
                statuses=statuses,
                requested_after=requested_after,
                requested_before=requested_before,
                page_size=page_size,
                limit=limit,
            )
        )

    def get_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.GetRunEventsResponse:
        """See AsyncClient.get_events."""
        return self._run(
            self._aio.get_events(
                run_id, after_seq=after_seq, page_size=page_size, timeout_s=timeout_s
            )
        )

    def iter_events(
        self, run_id: str, *, after_seq: int = 0, page_size: int = 0
    ) -> Iterator[tracker_pb2.StoredEvent]:
        """See AsyncClient.iter_events."""
        return self._iterate(
            self._aio.iter_events(run_id, after_seq=after_seq, page_size=page_size)
        )

    def list_chunks(
        self, run_id: str, *, timeout_s: float | None = None
    ) -> tracker_pb2.ListChunksResponse:
        return self._run(self._aio.list_chunks(run_id, timeout_s=timeout_s))

    def list_parts(
        self, run_id: str, *, timeout_s: float | None = None
    ) -> tracker_pb2.ListPartsResponse:
        return self._run(self._aio.list_parts(run_id, timeout_s=timeout_s))

    def watch(self, run_id: str, *, from_seq: int = 0) -> Iterator[tracker_pb2.StoredEvent]:
        """See AsyncClient.watch."""
        return self._iterate(self._aio.watch(run_id, from_seq=from_seq))

    def wait(
        self,
        run_id: str,
        *,
        min_seq: int = 0,
        catch_up_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> tracker_pb2.RunSummary:
        """See AsyncClient.wait."""
        return self._run(
            self._aio.wait(run_id, min_seq=min_seq, catch_up_s=catch_up_s, timeout_s=timeout_s)
        )
