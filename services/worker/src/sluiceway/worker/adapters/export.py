"""Read one key range from the source and stream it into part files (runs in a thread)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping

import pyarrow as pa

from sluiceway.common import crash, destination, fileopts, layout, rowhash
from sluiceway.common.domain.events import ChunkTask, ExportSpec, reads_ranges
from sluiceway.common.partitions import PartitionedWriter
from sluiceway.common.parts import PartWriter, WrittenPart
from sluiceway.common.phases import Phases, timed
from sluiceway.common.prefetch import Prefetch
from sluiceway.common.sources import Source, SourceError, arrow_schema, open_source
from sluiceway.worker.domain.decide import ChunkExport, Part, Stopped

# batches waiting between the reader thread and the writer (a batch is about
# batch_size_memory_mb): with one, the reader decodes the next batch while the writer encodes
# this one; a second measured no faster in `make bench` and cost the worker 6 MB more peak RSS
PREFETCH_BATCHES = 1


class FileExporter:
    """Source -> Arrow batches -> PartWriter, in bounded memory. Synchronous: call it from a
    worker thread (asyncio.to_thread)."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        opener: Callable[[ExportSpec, Mapping[str, str] | None], Source] = open_source,
    ) -> None:
        self._env = env
        self._open = opener
        # one open source per database, reused by the next chunks (a worker runs one at a time)
        self._sources: dict[tuple[object, ...], Source] = {}

    @staticmethod
    def _source_key(spec: ExportSpec) -> tuple[object, ...]:
        # the session's settings are the export's (tuning): a different one gets its own session
        return (
            spec.source.engine,
            spec.source.url_env,
            spec.source.path,
            spec.tuning_profile,
            spec.statement_timeout_s,
            spec.lock_timeout_s,
            spec.connect_timeout_s,
        )

    def _source(self, spec: ExportSpec) -> Source:
        key = self._source_key(spec)
        if key not in self._sources:
            self._sources[key] = self._open(spec, self._env)
        return self._sources[key]

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def set_aside(self, task: ChunkTask, attempt: int) -> list[str]:
        """Move every file of this chunk attempt (parts and temporary files) to the run's
        quarantine folder."""
        spec = task.spec
        dest = destination.open_destination(spec.destination, self._env)
        run_dir = destination.run_dir(dest, spec.name, task.run_id)
        mine = layout.attempt_names(dest.files(run_dir), task.range.index, attempt)
        target = destination.quarantine_dir(dest, spec.name, task.run_id)
        return dest.set_aside(run_dir, target, mine)

    @staticmethod
    def _partitioned(
        task: ChunkTask,
        dest: destination.Destination,
        part_writer: Callable[[str, Callable[[], int] | None], PartWriter],
    ) -> PartitionedWriter:
        """One part writer per partition folder of the run directory, numbering the chunk
        attempt's parts together (a part index is unique in its attempt)."""
        spec = task.spec
        indices = itertools.count()

        def make(folder: str) -> PartWriter:
            directory = dest.path(spec.name, "runs", task.run_id, folder)
            dest.make_dirs(directory)
            return part_writer(directory, lambda: next(indices))

        return PartitionedWriter(spec.partition_column, spec.partition_granularity, make)

    def export(
        self,
        task: ChunkTask,
        attempt: int,
        stop: threading.Event,
        phases: Phases | None = None,
    ) -> ChunkExport:
        """Read the task's range and write its parts. The source's next batches are read in
        a reader thread while the writer encodes the previous ones (at most PREFETCH_BATCHES
        waiting between them); the time of each phase is added to `phases`."""
        spec = task.spec
        source = self._source(spec)
        try:
            fields = task.schema or source.introspect(spec).schema
            # the plan's schema ends with the columns the export adds: not source columns
            read = fileopts.source_fields(fields, spec)
            fields = (*read, *fileopts.added_fields(spec))
            constants: dict[str, object] = {}
            if spec.add_exported_at:
                constants[fileopts.EXPORTED_AT] = fileopts.exported_at_of(task.run_id)
            dest = destination.open_destination(spec.destination, self._env)
            run_dir = destination.run_dir(dest, spec.name, task.run_id)
            dest.make_dirs(run_dir)

            def part_writer(
                directory: str, next_index: Callable[[], int] | None = None
            ) -> PartWriter:
                return PartWriter(
                    directory,
                    task.range.index,
                    attempt,
                    spec.format or "parquet",
                    spec.compression or "zstd",
                    spec.compression_level,
                    spec.row_group_rows,
                    arrow_schema(fields),
                    max_file_bytes=spec.max_file_bytes,
                    row_group_bytes=spec.row_group_mb * 2**20,
                    constants=constants,
                    destination=dest,
                    phases=phases,
                    next_part_index=next_index,
                )

            writer: PartWriter | PartitionedWriter
            if spec.partition_column:
                writer = self._partitioned(task, dest, part_writer)
            else:
                writer = part_writer(run_dir)
            # full mode (no chunk column, no page ranges): the one chunk is every row
            rng = task.range if reads_ranges(spec) else None
            if spec.consistent_snapshot and not task.snapshot_id:
                # never a quiet read of another snapshot than the plan's
                raise SourceError(
                    "consistent_snapshot: the task carries no snapshot id (planned by a "
                    "planner without consistent_snapshot); re-run the export",
                    retryable=False,
                )
            try:
                source_rows, batches = source.count_and_read(
                    spec, rng, read, snapshot=task.snapshot_id, phases=phases
                )
                if spec.row_hash:
                    # hashed in the reader thread, while the writer encodes earlier batches
                    covered = fileopts.row_hash_columns(spec, [f.name for f in read])
                    batches = _hashed(batches, covered, phases)
                # the reader thread is joined, and the source's transaction ended, on leaving
                with Prefetch(batches, depth=PREFETCH_BATCHES, name="chunk-reader") as ahead:
                    for n, batch in enumerate(ahead):
                        if stop.is_set():
                            raise Stopped(f"chunk {task.range.index} attempt {attempt}")
                        writer.write(batch)
                        if n == 0:
                            crash.point("worker.mid_read")
                written = _named(writer.close())
            except Stopped:
                writer.abort(keep=True)  # what was read so far is set aside, not deleted
                raise
            except BaseException:
                writer.abort()
                raise
        except BaseException:
            # the next attempt opens the source afresh
            self._sources.pop(self._source_key(spec), None)
            source.close()
            raise
        parts = tuple(
            Part(
                w.file_name,
                w.rows,
                w.bytes,
                w.part_index,
                w.content_fingerprint,
                w.opened_ns,
                column_checksums=w.column_checksums,
                max_lengths=w.max_lengths,
            )
            for w in written
        )
        return ChunkExport(parts, source_rows)


def _hashed(
    batches: Iterator[pa.RecordBatch], covered: tuple[str, ...], phases: Phases | None
) -> Iterator[pa.RecordBatch]:
    """Each batch with its `_row_hash` column (the time counted as `convert`); the source's
    batches are closed with these."""
    try:
        for batch in batches:
            with timed(phases, "convert"):
                try:
                    hashed = rowhash.with_row_hash(batch, covered)
                except rowhash.RowHashError as exc:
                    raise SourceError(str(exc), retryable=False) from exc
            yield hashed
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _named(written: list[WrittenPart] | list[tuple[str, WrittenPart]]) -> list[WrittenPart]:
    """The parts with names relative to the run directory (`key=value/part-...` for a
    partition's part)."""
    out: list[WrittenPart] = []
    for item in written:
        if isinstance(item, tuple):
            folder, part = item
            out.append(dataclasses.replace(part, file_name=f"{folder}/{part.file_name}"))
        else:
            out.append(item)
    return out
