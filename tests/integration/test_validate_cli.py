"""`sluiceway validate` on a real export, tampered with in each way; exit codes of `run --wait`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluiceway.common import fingerprint
from tests.integration.test_cli import CONFIG, cli, source  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

BROKEN = """
  - name: broken
    source: {engine: sqlite, path: small.db}
    table: no_such_table
    mode: full
    destination: out
"""


@pytest.fixture
def exported(tmp_path: Path, source: Path) -> Iterator[tuple[Path, dict[str, object]]]:  # noqa: F811
    """A stack, one successful run of `small` (and a failing run of `broken`); yields the
    export directory and the run's summary. The stack is stopped before the checks."""
    source.write_text(CONFIG + BROKEN)
    sd = ["--state-dir", str(tmp_path / "state")]
    up = cli("up", "--detach", "--workers", "1", *sd)
    assert up.returncode == 0, up.stderr
    try:
        run = cli("run", "-c", str(source), "--export", "small", "--wait", "--json", *sd)
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["status"] == "RUN_STATUS_SUCCEEDED"

        # a permanent error (the table does not exist): FAILED, exit 1, not 2/3/4
        bad = cli("run", "-c", str(source), "--export", "broken", "--wait", "--json", *sd)
        failed = json.loads(bad.stdout)
        assert failed["status"] == "RUN_STATUS_FAILED", bad.stdout
        assert failed["failure_cause"] == "planning"
        assert bad.returncode == 1, bad.stderr
    finally:
        down = cli("down", *sd, timeout=60)
        assert down.returncode == 0, down.stderr
    yield tmp_path / "out" / "small", summary


def copy_run(export_dir: Path, run_id: str, to: Path) -> Path:
    shutil.copytree(export_dir, to / "small")
    return to / "small" / "runs" / run_id


def validate(path: Path | str, *extra: str) -> tuple[int, dict[str, object], str]:
    res = cli("validate", str(path), "--json", *extra, timeout=60)
    report = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, report, res.stderr


def test_validate_a_real_export_and_every_tampering(
    tmp_path: Path, exported: tuple[Path, dict[str, object]]
) -> None:
    export_dir, summary = exported
    run_id = str(summary["run_id"])
    run_dir = export_dir / "runs" / run_id

    # the run as committed: by its directory, its manifest, and the export's latest pointer
    for given in (run_dir, run_dir / "manifest.json", export_dir / "manifest.json"):
        code, report, err = validate(given)
        assert code == 0, (given, report, err)
        assert report["passed"] and report["rows"] == 2000 and report["run_id"] == run_id
    assert validate(export_dir / "manifest.json")[1]["kind"] == "latest"
    human = cli("validate", str(run_dir))
    assert human.returncode == 0 and "OK" in human.stdout, human.stdout

    parts = sorted(run_dir.glob("part-*.parquet"))
    assert len(parts) == int(str(summary["manifest_parts"])) >= 2

    # one byte changed in the middle of a part: same size, other bytes
    d = copy_run(export_dir, run_id, tmp_path / "tamper")
    part = d / parts[0].name
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    code, report, _ = validate(d)
    assert (code, report["codes"]) == (3, ["FINGERPRINT_MISMATCH"])
    human = cli("validate", str(d))
    assert human.returncode == 3 and "FINGERPRINT_MISMATCH" in human.stdout

    # a part deleted
    d = copy_run(export_dir, run_id, tmp_path / "delete")
    (d / parts[-1].name).unlink()
    code, report, _ = validate(d)
    assert (code, report["codes"]) == (3, ["PART_MISSING"])

    # the manifest's totals edited (and _SUCCESS rewritten to match, so only totals fail)
    d = copy_run(export_dir, run_id, tmp_path / "totals")
    doc = json.loads((d / "manifest.json").read_text())
    doc["row_count"] += 1
    (d / "manifest.json").write_text(json.dumps(doc))
    code, report, _ = validate(d)
    assert code == 3 and set(report["codes"]) == {"MANIFEST_TOTALS", "SUCCESS_MISMATCH"}

    # _SUCCESS removed
    d = copy_run(export_dir, run_id, tmp_path / "success")
    (d / "_SUCCESS").unlink()
    code, report, _ = validate(d)
    assert (code, report["codes"]) == (3, ["SUCCESS_MISSING"])

    # the latest pointer no longer matches its run
    d = copy_run(export_dir, run_id, tmp_path / "pointer")
    pointer = d.parent.parent / "manifest.json"
    pointer.write_bytes(pointer.read_bytes().replace(b'"rows"', b'"rows" ', 1))
    code, report, _ = validate(pointer)
    assert (code, report["codes"]) == (3, ["POINTER_MISMATCH"])

    # cannot check: exit 1, one line on stderr, nothing on stdout
    code, _, err = validate(tmp_path / "nowhere")
    assert code == 1 and "no such file" in err
    (tmp_path / "other.json").write_text('{"run_id": "x", "rows": 3}')
    code, _, err = validate(tmp_path / "other.json")
    assert code == 1 and "not a Sluiceway manifest" in err
    (tmp_path / "garbage.json").write_text("{")
    assert validate(tmp_path / "garbage.json")[0] == 1
    code, _, err = validate("gs://bucket/out/small/manifest.json")
    assert code == 1 and "only s3://" in err


def _rewrite_part(run_dir: Path, change: Callable[[pa.Table], pa.Table], codec: str) -> str:
    """Rewrite the manifest's first part from its own values (changed by `change`) with
    `codec`, then make the manifest and _SUCCESS agree with the new bytes, as a tool that
    re-encodes files would: only the values can tell. Returns the part's path."""
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    part = manifest["parts"][0]
    path = run_dir / part["path"]
    pq.write_table(change(pq.read_table(path)), path, compression=codec)
    part["content_fingerprint"], part["size_bytes"] = fingerprint.of_file(path)
    data = json.dumps(manifest, indent=2).encode()
    manifest_path.write_bytes(data)
    (run_dir / "_SUCCESS").write_text(fingerprint.of_bytes(data))
    return str(part["path"])


def test_validate_depth_full_checks_every_columns_values(
    exported: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    export_dir, summary = exported
    run_id = str(summary["run_id"])
    run_dir = export_dir / "runs" / run_id
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["parts"][0]["column_checksums"]) == {"id", "name", "price", "seen"}
    code, report, _ = validate(run_dir, "--depth", "full")
    assert code == 0 and report["passed"], report

    # the same values in other bytes (another codec): both depths pass
    same = copy_run(export_dir, run_id, tmp_path / "same")
    _rewrite_part(same, lambda t: t, "gzip")
    for depth in ("files", "full"):
        code, report, _ = validate(same, "--depth", depth)
        assert code == 0 and report["passed"], (depth, report)

    # one value changed, the files re-fingerprinted: only --depth full sees it
    def one_name_changed(t: pa.Table) -> pa.Table:
        names = t.column("name").to_pylist()
        names[3] = names[3] + "!"
        return t.set_column(t.schema.get_field_index("name"), "name", pa.array(names, pa.string()))

    changed = copy_run(export_dir, run_id, tmp_path / "changed")
    part = _rewrite_part(changed, one_name_changed, "zstd")
    code, report, _ = validate(changed, "--depth", "files")
    assert code == 0 and report["passed"], report
    code, report, _ = validate(changed, "--depth", "full")
    assert code == 3 and report["codes"] == ["COLUMN_CHECKSUM_MISMATCH"], report
    (failure,) = report["failures"]
    assert failure["part"] == part and "column 'name'" in failure["message"]
