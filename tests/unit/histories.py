"""Builders of run histories for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SPEC = ev.ExportSpec(
    name="orders",
    source=ev.SourceSpec(engine="postgres", url_env="SHOP_URL"),
    table="public.orders",
    mode="chunked",
    chunk_column="id",
    chunk_size=100,
    format="parquet",
    compression="zstd",
    destination="/data/out",
    batch_size=1000,
    max_attempts=3,
)


class History:
    """Appends events with increasing times; `.events` is the history."""

    def __init__(self, run_id: str = "r1") -> None:
        self.run_id = run_id
        self.events: list[ev.RunEvent] = []

    def add(self, body: ev.Body, **kw: object) -> History:
        e = ev.RunEvent(
            event_id=event_id(self.run_id, body),
            run_id=self.run_id,
            export_name="orders",
            occurred_at=T0 + timedelta(seconds=len(self.events)),
            body=body,
            **kw,  # type: ignore[arg-type]
        )
        self.events.append(e)
        return self

    def planned(self, chunks: int = 2) -> History:
        self.add(ev.RunRequested(spec=SPEC, requested_by="test"))
        ranges = tuple(
            ev.ChunkRange(index=i, start_key=str(i * 100), end_key=str(i * 100 + 100))
            for i in range(chunks)
        )
        return self.add(ev.PlanResolved(plan_id="p1", strategy="chunked", chunks=ranges))

    def chunk_done(self, index: int, attempt: int = 1, rows: int = 10, parts: int = 1) -> History:
        self.add(ev.ChunkStarted(chunk_index=index, attempt=attempt))
        for p in range(parts):
            self.add(
                ev.FileWritten(
                    file_name=f"part-{index:05d}-{p:04d}-a{attempt}.parquet",
                    rows=rows // parts,
                    bytes=100,
                    part_index=p,
                    chunk_index=index,
                    attempt=attempt,
                    content_fingerprint="xxh3:0000000000000000",
                )
            )
        return self.add(
            ev.ChunkCompleted(chunk_index=index, rows=rows, files=parts, attempt=attempt)
        )

    def committed(self) -> History:
        self.add(ev.ValidationResult(passed=True))
        self.add(ev.ManifestCommitted(manifest_uri="file:///m", row_count=20, part_count=2))
        return self.add(ev.RunCompleted(status=ev.RunStatus.SUCCEEDED))

    # ---- appended for replay tests (property tests, recorded histories, tracker rebuild) -----

    def chunk_retried(self, index: int, rows: int = 10, parts: int = 1) -> History:
        """Attempt 1 fails with a retryable error, attempt 2 completes."""
        self.add(ev.ChunkStarted(chunk_index=index, attempt=1))
        self.add(ev.ChunkFailed(chunk_index=index, error="lost", attempt=1, retryable=True))
        self.add(ev.RetryAttempted(chunk_index=index, attempt=2, reason="lost", backoff_ms=500))
        return self.chunk_done(index, attempt=2, rows=rows, parts=parts)

    def chunk_failed(
        self, index: int, attempt: int = 1, error: str = "no such table", retryable: bool = False
    ) -> History:
        self.add(ev.ChunkStarted(chunk_index=index, attempt=attempt))
        return self.add(
            ev.ChunkFailed(chunk_index=index, error=error, attempt=attempt, retryable=retryable)
        )

    def chunk_fenced(self, index: int, rows: int = 10) -> History:
        """Two live attempts (a redelivery after ack_wait): attempt 2 completes first and wins;
        attempt 1's file and completion arrive late and are fenced off as anomalies."""
        self.add(ev.ChunkStarted(chunk_index=index, attempt=1))
        self.add(ev.ChunkStarted(chunk_index=index, attempt=2))
        self.files_written(index, attempt=2, rows=rows)
        self.add(ev.ChunkCompleted(chunk_index=index, rows=rows, files=1, attempt=2))
        self.files_written(index, attempt=1, rows=rows)
        return self.add(ev.ChunkCompleted(chunk_index=index, rows=rows, files=1, attempt=1))

    def files_written(
        self, index: int, attempt: int = 1, rows: int = 10, parts: int = 1
    ) -> History:
        """Only the FileWritten events of one attempt."""
        for p in range(parts):
            self.add(
                ev.FileWritten(
                    file_name=f"part-{index:05d}-{p:04d}-a{attempt}.parquet",
                    rows=rows // parts,
                    bytes=100,
                    part_index=p,
                    chunk_index=index,
                    attempt=attempt,
                    content_fingerprint="xxh3:0000000000000000",
                )
            )
        return self

    def canceled(self, reason: str = "user") -> History:
        self.add(ev.CancelRequested(reason=reason, requested_by="test"))
        return self.add(ev.RunCompleted(status=ev.RunStatus.CANCELED))

    def failed(self, error: str = "chunk 1 failed: no such table") -> History:
        return self.add(ev.RunCompleted(status=ev.RunStatus.FAILED, error_message=error))
