"""Destination layout: <dest>/<export>/runs/<run_id>/[<key>=<value>/]part-<chunk>-<n>-a<attempt>
.<ext> (the partition folder with `partition_by`, sluiceway.common.partitions)."""

from __future__ import annotations

from pathlib import Path

EXTENSIONS = {"parquet": "parquet", "csv": "csv"}


def export_dir(destination: str, export_name: str) -> Path:
    return Path(destination) / export_name


def run_dir(destination: str, export_name: str, run_id: str) -> Path:
    return export_dir(destination, export_name) / "runs" / run_id


def part_name(
    chunk_index: int, part_index: int, attempt: int, fmt: str, compression: str = ""
) -> str:
    # The attempt is in the name so that two attempts of one chunk (a redelivery while the first
    # still runs) never overwrite each other's files; only the winner's enter the manifest.
    # A gzip-compressed CSV part ends .csv.gz, so that readers know to decompress it.
    ext = EXTENSIONS[fmt] + (".gz" if fmt == "csv" and compression == "gzip" else "")
    return f"part-{chunk_index:05d}-{part_index:04d}-a{attempt}.{ext}"


def temp_name(final_name: str) -> str:
    return f".{final_name}.tmp"


def attempt_files(run_dir: Path, chunk_index: int, attempt: int) -> list[str]:
    """Names of the files (parts and temporary parts) one chunk attempt has in `run_dir`."""
    try:
        names = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    except FileNotFoundError:
        return []
    return attempt_names(names, chunk_index, attempt)


def attempt_names(names: list[str], chunk_index: int, attempt: int) -> list[str]:
    """Of a run directory's file names (`name`, or `key=value/name` in a partition folder),
    those of one chunk attempt (parts and temporaries)."""
    prefix = f"part-{chunk_index:05d}-"
    suffix = f"-a{attempt}."

    def mine(name: str) -> bool:
        base = name.rsplit("/", 1)[-1].lstrip(".")
        return base.startswith(prefix) and suffix in base

    return [n for n in names if mine(n)]


def manifest_path(destination: str, export_name: str, run_id: str) -> Path:
    return run_dir(destination, export_name, run_id) / "manifest.json"


def success_path(destination: str, export_name: str, run_id: str) -> Path:
    return run_dir(destination, export_name, run_id) / "_SUCCESS"


def latest_pointer_path(destination: str, export_name: str) -> Path:
    """<dest>/<export>/manifest.json: the manifest of the latest committed run."""
    return export_dir(destination, export_name) / "manifest.json"


def quarantine_dir(destination: str, export_name: str, run_id: str) -> Path:
    return export_dir(destination, export_name) / "_quarantine" / run_id
