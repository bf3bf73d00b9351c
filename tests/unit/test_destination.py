"""The destination interface: s3:// URLs, the local sink (temp, fsync, rename), listing and
setting aside, and the config's handling of an s3:// destination."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.common import destination
from sluiceway.common.config import ConfigError, load_text


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://bucket/prefix", None),
        ("s3://bucket", None),
        ("s3:///prefix", "needs a bucket"),
        ("s3://key:secret@bucket/p", "no credentials"),
        ("s3://bucket/p?endpoint=x", "no credentials, query"),
        ("s3://bucket//p", "empty segment"),
        ("s3://bucket/../p", "'..'"),
    ],
)
def test_s3_urls(url: str, problem: str | None) -> None:
    found = destination.url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)
    assert destination.is_object_store(url) and not destination.is_object_store("/data/out")


def test_a_local_part_is_visible_only_once_committed(tmp_path: Path) -> None:
    dest = destination.open_destination(str(tmp_path))
    run = destination.run_dir(dest, "e", "r1")
    dest.make_dirs(run)
    sink = dest.open_part(run, "part-00000-0000-a1.parquet")
    sink.file.write(b"x" * 10)
    assert dest.files(run) == [".part-00000-0000-a1.parquet.tmp"]
    digest, size = sink.commit()
    assert size == 10 and digest.startswith("xxh3:")
    assert dest.files(run) == ["part-00000-0000-a1.parquet"]
    assert dest.fingerprint(dest.path("e", "runs", "r1", "part-00000-0000-a1.parquet")) == (
        digest,
        size,
    )
    kept = dest.open_part(run, "part-00001-0000-a1.parquet")
    kept.file.write(b"y")
    kept.discard(keep=True)  # left under its temporary name, for the caller to set aside
    dropped = dest.open_part(run, "part-00002-0000-a1.parquet")
    dropped.discard()
    assert dest.files(run) == [".part-00001-0000-a1.parquet.tmp", "part-00000-0000-a1.parquet"]
    target = destination.quarantine_dir(dest, "e", "r1")
    assert dest.set_aside(run, target, [".part-00001-0000-a1.parquet.tmp", "absent"]) == [
        ".part-00001-0000-a1.parquet.tmp"
    ]
    assert dest.files(target) == [".part-00001-0000-a1.parquet.tmp"]
    assert dest.read_bytes(dest.path("e", "nope")) is None
    dest.put(destination.latest_pointer(dest, "e"), b"{}")
    assert dest.read_bytes(destination.latest_pointer(dest, "e")) == b"{}"
    assert dest.uri(run).startswith("file://")


CONFIG = """
sources:
  s: {{engine: sqlite, path: {db}}}
exports:
  - {{name: e, source: s, table: t, destination: "{dest}"}}
"""


def test_the_config_keeps_an_s3_destination_as_written(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    db.touch()
    spec = load_text(CONFIG.format(db=db, dest="s3://bucket/some/prefix"), env={})["e"]
    assert spec.destination == "s3://bucket/some/prefix"
    with pytest.raises(ConfigError, match="needs a bucket"):
        load_text(CONFIG.format(db=db, dest="s3:///prefix"), env={})
    with pytest.raises(ConfigError, match="no credentials"):
        load_text(CONFIG.format(db=db, dest="s3://AKIA:secret@bucket/p"), env={})
