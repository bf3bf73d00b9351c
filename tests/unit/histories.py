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
