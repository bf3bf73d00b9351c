"""Read a committed run back from a local destination or an object store (s3://, through
sluiceway.common.destination) and verify it (sluiceway.common.domain.verify decides; this module
only reads files). Blocking."""

from __future__ import annotations

import csv
import gzip
import io
import json
import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sluiceway.common import colstats, destination, fingerprint, rowhash
from sluiceway.common.domain import verify
from sluiceway.common.domain.events import ValidationFailure

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


class CannotCheck(Exception):
    """The path cannot be checked at all: missing, not a manifest, unreadable JSON, no
    permission, an object store out of reach. Says nothing about the data."""


@dataclass(frozen=True)
class Report:
    path: str  # as given
    kind: str  # "run" (a run's manifest) or "latest" (an export's latest pointer)
    manifest: str  # the manifest that was checked
    run_dir: str
    run_id: str
    export_name: str
    format: str
    parts: int  # as listed
    rows: int
    bytes: int
    failures: tuple[ValidationFailure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when absent; CannotCheck when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotCheck(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CannotCheck(f"{path} is not JSON: {exc}") from None


def locate(given: str) -> Path:
    """The manifest file that PATH names (a run directory, a manifest, an export directory)."""
    if "://" in given:
        scheme = given.split("://", 1)[0]
        raise CannotCheck(
            f"{scheme}:// paths are not supported (only s3:// object stores): "
            "validate a local copy of the run directory"
        )
    p = Path(given)
    if not p.exists():
        raise CannotCheck(f"{given}: no such file or directory")
    if p.is_dir():
        p = p / MANIFEST
        if not p.is_file():
            raise CannotCheck(f"{given}: no {MANIFEST} in this directory")
    return p


def _is_latest_pointer(manifest: Path) -> bool:
    """<dest>/<export>/manifest.json sits beside runs/; a run's own sits in runs/<run_id>/."""
    parent = manifest.parent
    if (parent / SUCCESS).exists() or parent.parent.name == "runs":
        return False
    return (parent / "runs").is_dir()


DEPTHS = ("files", "full")


def verify_path(given: str, depth: str = "files") -> Report:
    """Every check of a committed run; with depth "full", also each Parquet part's column
    checksums recomputed from its values."""
    if depth not in DEPTHS:
        raise CannotCheck(f"unknown depth {depth!r} (expected one of: {', '.join(DEPTHS)})")
    if destination.is_object_store(given):
        return verify_object_store(given, depth=depth)
    manifest = locate(given)
    if _read(manifest) is None:
        raise CannotCheck(f"{manifest}: no such file")
    tree = _Tree(
        read=lambda key: _read(Path(key)),
        is_latest_pointer=lambda key: _is_latest_pointer(Path(key)),
        observe=lambda run_dir, name, fmt, gz: observe(Path(run_dir), name, fmt, gzip_csv=gz),
        join=lambda *parts: str(Path(*parts)),
        dirname=lambda key: str(Path(key).parent),
        open_binary=lambda key: open(key, "rb"),
    )
    return _verify(given, str(manifest), tree, depth=depth)


@dataclass(frozen=True)
class _Tree:
    """Where a run is read from: a local folder or an object store, as keys and functions."""

    read: Callable[[str], bytes | None]
    is_latest_pointer: Callable[[str], bool]  # given the manifest's key
    observe: Callable[[str, str, str, bool], verify.PartSeen | None]
    join: Callable[..., str]
    dirname: Callable[[str], str]
    open_binary: Callable[[str], Any]  # a part's bytes, as a seekable file (depth full)


def _verify(
    given: str, manifest: str, tree: _Tree, scheme: str = "", depth: str = "files"
) -> Report:
    """Every check of a committed run, the same for any tree; verify.* decides."""
    data = tree.read(manifest)
    if data is None:
        raise CannotCheck(f"{given}: no {MANIFEST} there")
    doc = _parse(data, Path(manifest))
    if not verify.is_manifest(doc):
        raise CannotCheck(f"{manifest} is not a Sluiceway manifest (no manifest_version/parts)")

    failures: list[ValidationFailure] = []
    kind = "run"
    run_dir = tree.dirname(manifest)
    checked = manifest
    if tree.is_latest_pointer(manifest):
        kind = "latest"
        run_id = doc.get("run_id")
        if not isinstance(run_id, str) or not verify.safe_relative(run_id) or "/" in run_id:
            failures.append(
                ValidationFailure(
                    verify.MANIFEST_FIELDS, "", f"run_id {run_id!r} cannot name a run directory"
                )
            )
            return _report(given, kind, scheme + manifest, scheme + run_dir, doc, failures)
        run_dir = tree.join(run_dir, "runs", run_id)
        checked = tree.join(run_dir, MANIFEST)
        run_data = tree.read(checked)
        failures.extend(verify.check_pointer(data, run_data))
        if run_data is not None:
            try:
                run_doc = json.loads(run_data)
            except (UnicodeDecodeError, ValueError):
                run_doc = None
            if verify.is_manifest(run_doc):  # else: the pointer's copy is checked instead
                data, doc = run_data, run_doc

    success = tree.read(tree.join(run_dir, SUCCESS))
    failures.extend(
        verify.check_success(
            fingerprint.of_bytes(data),
            None if success is None else success.decode("utf-8", errors="replace"),
        )
    )
    shape_failures, claims = verify.check_manifest(doc)
    failures.extend(shape_failures)
    fmt = doc.get("format") if doc.get("format") in verify.FORMATS else ""
    gz = doc.get("compression") == "gzip"
    observed = {
        c.path: tree.observe(run_dir, c.path, str(fmt), gz)
        for c in claims
        if verify.safe_relative(c.path)
    }
    failures.extend(verify.check_parts(claims, observed))
    if depth == "full" and fmt == "parquet":
        broken = {f.part for f in failures}
        _, row_hash = verify.row_hash_of(doc)
        for claim in claims:
            wanted = claim.column_checksums or row_hash is not None
            if wanted and claim.path not in broken and observed.get(claim.path):
                computed, hashes = _recompute(tree, tree.join(run_dir, claim.path), row_hash)
                if claim.column_checksums:
                    failures.extend(verify.check_columns(claim, computed))
                if hashes is not None:
                    failures.extend(verify.check_row_hashes(claim, hashes))
    return _report(given, kind, scheme + checked, scheme + run_dir, doc, failures)


def _recompute(
    tree: _Tree, key: str, row_hash: verify.RowHashClaim | None
) -> tuple[dict[str, str], verify.RowHashSeen | None]:
    """A Parquet part's column checksums, and with `row_hash` its rows whose hash differs,
    recomputed from its values batch by batch."""
    try:
        with tree.open_binary(key) as f:
            parquet = pq.ParquetFile(f)
            stats = colstats.PartStats(parquet.schema_arrow)
            names = set(parquet.schema_arrow.names)
            missing: tuple[str, ...] = ()
            if row_hash is not None:
                missing = tuple(c for c in (*row_hash.columns, row_hash.column) if c not in names)
            mismatched, first, offset = 0, None, 0
            for batch in parquet.iter_batches(batch_size=65_536):
                stats.update(batch)
                if row_hash is not None and not missing:
                    covered = [batch.column(c) for c in row_hash.columns]
                    differs = pc.fill_null(
                        pc.not_equal(rowhash.row_hashes(covered), batch.column(row_hash.column)),
                        True,
                    )
                    count = pc.sum(differs.cast(pa.int64())).as_py() or 0
                    if count and first is None:
                        first = offset + pc.index(differs, True).as_py()
                    mismatched += count
                offset += batch.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CannotCheck(f"cannot read {key} as Parquet: {exc}") from None
    seen = None if row_hash is None else verify.RowHashSeen(mismatched, first, missing)
    return stats.checksums(), seen


def _report(
    given: str,
    kind: str,
    manifest: str,
    run_dir: str,
    doc: dict[str, Any],
    failures: list[ValidationFailure],
) -> Report:
    _, claims = verify.check_manifest(doc)
    return Report(
        path=given,
        kind=kind,
        manifest=manifest,
        run_dir=run_dir,
        run_id=str(doc.get("run_id", "")),
        export_name=str(doc.get("export_name", "")),
        format=str(doc.get("format", "")),
        parts=len(claims),
        rows=sum(c.rows for c in claims),
        bytes=sum(c.size_bytes for c in claims),
        failures=tuple(failures),
    )


def observe(
    run_dir: Path, name: str, fmt: str, *, gzip_csv: bool = False
) -> verify.PartSeen | None:
    """What is on disk under `name`: bytes, fingerprint and (for a known format) rows."""
    path = run_dir / name
    try:
        if not path.exists() and not path.is_symlink():
            return None
        if not path.resolve().is_relative_to(run_dir.resolve()):
            return verify.PartSeen(fingerprint="", size=-1, outside=True)
        if not path.is_file():
            return verify.PartSeen(fingerprint="", size=-1, unreadable="not a regular file")
        digest, size = fingerprint.of_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotCheck(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: int | None = None
    unreadable = ""
    if fmt:
        try:
            rows = parquet_rows(path) if fmt == "parquet" else csv_rows(path, gzip_csv=gzip_csv)
        except PermissionError as exc:
            raise CannotCheck(f"cannot read {path}: {exc.strerror or exc}") from None
        except (pa.ArrowException, OSError, ValueError, EOFError, csv.Error) as exc:
            unreadable = f"cannot read it as {fmt}: {exc}"
    return verify.PartSeen(fingerprint=digest, size=size, rows=rows, unreadable=unreadable)


def parquet_rows(path: Path) -> int:
    """From the footer: no data page is read."""
    return int(pq.ParquetFile(path).metadata.num_rows)


def _records(f: IO[bytes] | gzip.GzipFile) -> int:
    return sum(
        1 for _ in csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""), strict=True)
    )


def csv_rows(path: Path, *, gzip_csv: bool = False) -> int:
    """Records after the header line (a quoted value may hold newlines, so lines won't do)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a jsonb or text value may exceed the 128 KiB default
    try:
        with open(path, "rb") as raw:
            if gzip_csv:
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    records = _records(unzipped)
            else:
                records = _records(raw)
    finally:
        csv.field_size_limit(limit)
    return max(0, records - 1)


# ---- object stores ---------------------------------------------------------------------------


def verify_object_store(
    given: str, env: dict[str, str] | None = None, depth: str = "files"
) -> Report:
    """The same checks as verify_path for s3://bucket/key (a run prefix, a manifest.json or an
    export prefix's latest pointer), with the endpoint and credentials from the environment."""
    url = given.rstrip("/")
    if problem := destination.url_problem(url):
        raise CannotCheck(f"{given}: {problem}")
    store = destination.ObjectStore(url, env)
    base = url[len("s3://") :]
    manifest = base if base.endswith(".json") else posixpath.join(base, MANIFEST)
    tree = _Tree(
        read=lambda key: _read_store(store, key),
        is_latest_pointer=lambda key: _store_is_latest_pointer(store, posixpath.dirname(key)),
        observe=lambda run_dir, name, fmt, gz: observe_store(
            store, run_dir, name, fmt, gzip_csv=gz
        ),
        join=posixpath.join,
        dirname=posixpath.dirname,
        open_binary=lambda key: store.arrow().open_input_file(key),
    )
    return _verify(given, manifest, tree, scheme="s3://", depth=depth)


def _read_store(store: destination.ObjectStore, key: str) -> bytes | None:
    try:
        return store.read_bytes(key)
    except OSError as exc:
        raise CannotCheck(f"cannot read s3://{key}: {exc}") from None


def _store_is_latest_pointer(store: destination.ObjectStore, directory: str) -> bool:
    try:
        fs = store.arrow()
        if posixpath.basename(posixpath.dirname(directory)) == "runs":
            return False
        if fs.get_file_info(posixpath.join(directory, SUCCESS)).type == pafs.FileType.File:
            return False
        return bool(store.files(posixpath.join(directory, "runs")) or _has_dirs(fs, directory))
    except OSError as exc:
        raise CannotCheck(f"cannot list s3://{directory}: {exc}") from None


def _has_dirs(fs: pafs.FileSystem, directory: str) -> bool:
    selector = pafs.FileSelector(posixpath.join(directory, "runs"), allow_not_found=True)
    return any(i.type == pafs.FileType.Directory for i in fs.get_file_info(selector))


def observe_store(
    store: destination.ObjectStore, run_dir: str, name: str, fmt: str, *, gzip_csv: bool = False
) -> verify.PartSeen | None:
    """What the object store holds under `name`: bytes, fingerprint and rows."""
    key = posixpath.join(run_dir, name)
    try:
        seen = store.fingerprint(key)
    except OSError as exc:
        raise CannotCheck(f"cannot read s3://{key}: {exc}") from None
    if seen is None:
        return None
    digest, size = seen
    rows: int | None = None
    unreadable = ""
    if fmt:
        fs = store.arrow()
        try:
            if fmt == "parquet":
                with fs.open_input_file(key) as f:
                    rows = int(pq.ParquetFile(f).metadata.num_rows)
            else:
                with fs.open_input_stream(key) as f:
                    rows = _csv_rows_of(io.BytesIO(f.read()), gzip_csv=gzip_csv)
        except (pa.ArrowException, OSError, ValueError, EOFError, csv.Error) as exc:
            unreadable = f"cannot read it as {fmt}: {exc}"
    return verify.PartSeen(fingerprint=digest, size=size, rows=rows, unreadable=unreadable)


def _csv_rows_of(raw: IO[bytes], *, gzip_csv: bool) -> int:
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        if gzip_csv:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                records = _records(unzipped)
        else:
            records = _records(raw)
    finally:
        csv.field_size_limit(limit)
    return max(0, records - 1)
