"""The manifest-vs-disk comparison (pure) and its file reader: every failure code."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sluiceway.committer.domain import gates
from sluiceway.common import fingerprint, verifier
from sluiceway.common.domain import verify
from sluiceway.common.domain.verify import PartClaim, PartSeen

FP = "xxh3:00000000000000aa"
CLAIM = PartClaim(
    path="part-00000-0000-a1.parquet", rows=10, size_bytes=100, content_fingerprint=FP
)
GOOD = PartSeen(fingerprint=FP, size=100, rows=10)


def codes(failures: list[Any]) -> list[str]:
    return [f.code for f in failures]


def manifest(**over: Any) -> dict[str, Any]:
    parts = [
        {
            "part_id": f"c{i:05d}-p0000",
            "path": f"part-{i:05d}-0000-a1.parquet",
            "rows": 10,
            "size_bytes": 100,
            "content_fingerprint": FP,
            "chunk_index": i,
            "attempt": 1,
        }
        for i in range(2)
    ]
    doc: dict[str, Any] = {
        "manifest_version": 1,
        "run_id": "r1",
        "export_name": "e",
        "status": "SUCCEEDED",
        "started_at": "2026-01-01T00:00:00.000000Z",
        "finished_at": "2026-01-01T00:00:01.000000Z",
        "source": {"engine": "sqlite"},
        "destination": "out",
        "format": "parquet",
        "compression": "zstd",
        "schema": [],
        "schema_fingerprint": FP,
        "row_count": 20,
        "part_count": 2,
        "parts": parts,
        "plan_id": "p",
    }
    doc.update(over)
    return doc


# ---- parts ------------------------------------------------------------------------------------


def test_a_part_as_listed_passes() -> None:
    assert verify.check_parts([CLAIM], {CLAIM.path: GOOD}) == []


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        (None, [verify.PART_MISSING]),
        (PartSeen(fingerprint=FP, size=99, rows=10), [verify.SIZE_MISMATCH]),
        (PartSeen(fingerprint="xxh3:ff", size=100, rows=10), [verify.FINGERPRINT_MISMATCH]),
        (PartSeen(fingerprint=FP, size=100, rows=11), [verify.ROW_COUNT_MISMATCH]),
        (PartSeen(fingerprint=FP, size=100, unreadable="bad footer"), [verify.PART_UNREADABLE]),
        (PartSeen(fingerprint="", size=-1, outside=True), [verify.PART_PATH_INVALID]),
        # a torn file: both facts are reported
        (
            PartSeen(fingerprint="xxh3:ff", size=100, unreadable="bad footer"),
            [verify.FINGERPRINT_MISMATCH, verify.PART_UNREADABLE],
        ),
        # rows not counted (the committer's gate reads only bytes): no row verdict
        (PartSeen(fingerprint=FP, size=100, rows=None), []),
    ],
)
def test_each_difference_has_its_code(seen: PartSeen | None, expected: list[str]) -> None:
    assert codes(verify.check_parts([CLAIM], {CLAIM.path: seen})) == expected


@pytest.mark.parametrize("path", ["../x.parquet", "/etc/passwd", "a/../../x", "", "a\\..\\b"])
def test_a_path_leaving_the_run_directory_is_never_looked_up(path: str) -> None:
    claim = PartClaim(path=path, rows=1, size_bytes=1, content_fingerprint=FP)
    # even when something is "observed" under that name, the path alone fails
    found = verify.check_parts([claim], {path: PartSeen(fingerprint=FP, size=1, rows=1)})
    assert codes(found) == [verify.PART_PATH_INVALID]


def test_the_committer_gate_speaks_the_same_codes() -> None:
    assert gates.PART_MISSING == verify.PART_MISSING
    assert gates.PART_PATH_INVALID == verify.PART_PATH_INVALID
    assert gates.safe_relative is verify.safe_relative
    assert verify.CODES >= {
        gates.PART_MISSING,
        gates.SIZE_MISMATCH,
        gates.FINGERPRINT_MISMATCH,
        gates.PART_PATH_INVALID,
    }


# ---- the manifest -----------------------------------------------------------------------------


def test_a_whole_manifest_has_no_failures_and_claims_every_part() -> None:
    failures, claims = verify.check_manifest(manifest())
    assert failures == []
    assert [c.path for c in claims] == ["part-00000-0000-a1.parquet", "part-00001-0000-a1.parquet"]
    assert verify.is_manifest(manifest())


@pytest.mark.parametrize("doc", [[], "x", 3, None, {"parts": []}, {"manifest_version": 1}])
def test_what_is_not_a_manifest_cannot_be_checked(doc: object) -> None:
    assert not verify.is_manifest(doc)


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"row_count": 21}, [verify.MANIFEST_TOTALS]),
        ({"part_count": 3}, [verify.MANIFEST_TOTALS]),
        ({"row_count": 0, "part_count": 0}, [verify.MANIFEST_TOTALS, verify.MANIFEST_TOTALS]),
        ({"schema_fingerprint": 7}, [verify.MANIFEST_FIELDS]),
        ({"row_count": True}, [verify.MANIFEST_FIELDS]),  # a bool is not a count
        ({"format": "orc"}, [verify.MANIFEST_FIELDS]),
    ],
)
def test_fields_and_totals(over: dict[str, Any], expected: list[str]) -> None:
    failures, _ = verify.check_manifest(manifest(**over))
    assert codes(failures) == expected


def test_a_missing_field_is_named() -> None:
    doc = manifest()
    del doc["plan_id"]
    failures, _ = verify.check_manifest(doc)
    assert codes(failures) == [verify.MANIFEST_FIELDS] and "plan_id" in failures[0].message


def test_a_malformed_or_repeated_part_is_not_claimed() -> None:
    doc = manifest()
    doc["parts"].append(copy.deepcopy(doc["parts"][0]))
    doc["parts"].append({"path": "part-x.parquet", "rows": "ten"})
    doc["parts"].append("nope")
    doc["part_count"] = 5
    doc["row_count"] = 30
    failures, claims = verify.check_manifest(doc)
    assert codes(failures) == [
        verify.PART_DUPLICATE,
        verify.MANIFEST_FIELDS,
        verify.MANIFEST_FIELDS,
    ]
    assert len(claims) == 2


# ---- _SUCCESS and the latest pointer ----------------------------------------------------------


def test_success_holds_the_manifest_digest() -> None:
    assert verify.check_success(FP, FP) == []
    assert verify.check_success(FP, FP + "\n") == []
    assert codes(verify.check_success(FP, None)) == [verify.SUCCESS_MISSING]
    assert codes(verify.check_success(FP, "xxh3:0000000000000000")) == [verify.SUCCESS_MISMATCH]


def test_the_pointer_is_a_copy_of_its_run_manifest() -> None:
    assert verify.check_pointer(b"{}", b"{}") == []
    assert codes(verify.check_pointer(b"{}", None)) == [verify.POINTER_MISMATCH]
    assert codes(verify.check_pointer(b"{}", b"{ }")) == [verify.POINTER_MISMATCH]


def test_every_code_is_produced_by_some_check() -> None:
    produced = {
        verify.PART_MISSING,
        verify.SIZE_MISMATCH,
        verify.FINGERPRINT_MISMATCH,
        verify.PART_PATH_INVALID,
        verify.ROW_COUNT_MISMATCH,
        verify.PART_UNREADABLE,
        verify.PART_DUPLICATE,
        verify.MANIFEST_FIELDS,
        verify.MANIFEST_TOTALS,
        verify.SUCCESS_MISSING,
        verify.SUCCESS_MISMATCH,
        verify.COLUMN_CHECKSUM_MISMATCH,
        verify.POINTER_MISMATCH,
        verify.ROW_HASH_MISMATCH,
    }
    assert produced == verify.CODES


# ---- the reader (files under tmp_path) --------------------------------------------------------


def write_run(run_dir: Path, fmt: str = "parquet", compression: str = "zstd") -> dict[str, Any]:
    """A committed run as the committer writes it: parts, manifest, _SUCCESS."""
    run_dir.mkdir(parents=True)
    table = pa.table({"id": [1, 2, 3], "note": ["a", 'line\nbreak, "quoted"', None]})
    name = f"part-00000-0000-a1.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, run_dir / name, compression=compression)
    else:  # the writer the workers use (sluiceway.common.parts)
        with pa.OSFile(str(run_dir / name), "wb") as raw:
            sink = pa.CompressedOutputStream(raw, "gzip") if compression == "gzip" else raw
            with pacsv.CSVWriter(sink, table.schema) as w:
                w.write_table(table)
            if sink is not raw:
                sink.close()
    digest, size = fingerprint.of_file(run_dir / name)
    doc = manifest(format=fmt, compression=compression, row_count=3, part_count=1)
    doc["parts"] = [
        {
            "part_id": "c00000-p0000",
            "path": name,
            "rows": 3,
            "size_bytes": size,
            "content_fingerprint": digest,
            "chunk_index": 0,
            "attempt": 1,
        }
    ]
    data = json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n"
    (run_dir / "manifest.json").write_bytes(data)
    (run_dir / "_SUCCESS").write_text(fingerprint.of_bytes(data))
    return doc


@pytest.mark.parametrize(
    ("fmt", "compression"), [("parquet", "zstd"), ("csv", ""), ("csv", "gzip")]
)
def test_the_reader_counts_rows_of_each_format(tmp_path: Path, fmt: str, compression: str) -> None:
    write_run(tmp_path / "run", fmt, compression)
    report = verifier.verify_path(str(tmp_path / "run"))
    assert report.passed, report.failures
    assert (report.kind, report.parts, report.rows) == ("run", 1, 3)


def test_the_reader_finds_rows_the_manifest_does_not_list(tmp_path: Path) -> None:
    doc = write_run(tmp_path / "run")
    doc["parts"][0]["rows"] = 4
    doc["row_count"] = 4
    data = json.dumps(doc).encode()
    (tmp_path / "run" / "manifest.json").write_bytes(data)
    (tmp_path / "run" / "_SUCCESS").write_text(fingerprint.of_bytes(data))
    report = verifier.verify_path(str(tmp_path / "run" / "manifest.json"))
    assert [f.code for f in report.failures] == [verify.ROW_COUNT_MISMATCH]


def test_a_symlink_out_of_the_run_directory_is_refused(tmp_path: Path) -> None:
    doc = write_run(tmp_path / "run")
    name = doc["parts"][0]["path"]
    target = tmp_path / "elsewhere.parquet"
    (tmp_path / "run" / name).rename(target)
    (tmp_path / "run" / name).symlink_to(target)
    report = verifier.verify_path(str(tmp_path / "run"))
    assert [f.code for f in report.failures] == [verify.PART_PATH_INVALID]


def test_a_truncated_parquet_is_unreadable(tmp_path: Path) -> None:
    doc = write_run(tmp_path / "run")
    part = tmp_path / "run" / doc["parts"][0]["path"]
    part.write_bytes(part.read_bytes()[:-8])
    report = verifier.verify_path(str(tmp_path / "run"))
    assert [f.code for f in report.failures] == [verify.SIZE_MISMATCH, verify.PART_UNREADABLE]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("gs://bucket/out/e/manifest.json", "only s3://"),
        ("s3:///out/e/manifest.json", "needs a bucket"),
        ("missing-dir", "no such file"),
    ],
)
def test_paths_that_cannot_be_checked(tmp_path: Path, given: str, message: str) -> None:
    path = given if "://" in given else str(tmp_path / given)
    with pytest.raises(verifier.CannotCheck, match=message):
        verifier.verify_path(path)


def test_json_that_is_no_manifest_cannot_be_checked(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(verifier.CannotCheck, match="not a Sluiceway manifest"):
        verifier.verify_path(str(tmp_path / "x.json"))
    with pytest.raises(verifier.CannotCheck, match="not JSON"):
        verifier.verify_path(str(tmp_path / "bad.json"))
    with pytest.raises(verifier.CannotCheck, match=r"no manifest\.json"):
        verifier.verify_path(str(tmp_path / "empty"))
