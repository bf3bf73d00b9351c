"""Where the files go: a local directory or an S3-compatible object store (docs/architecture.md,
"Destinations").

Paths are strings: absolute file paths for a local destination, "bucket/key" for an object
store (pyarrow.fs style). A Destination offers only what the worker, the committer and the
verifier need: stream a part (atomic: a reader sees the whole part or none), fingerprint and
size a file, read a small file, put a small file atomically, list a directory's files and move
files aside.

Local: temp name + fsync + rename + directory fsync, exactly as parts.PartWriter always did.

Object store (`s3://bucket/prefix`): there is no rename, but a PUT is atomic. A part is spooled
to a local temporary file while it is written (bounded: one part per writer) and uploaded under
its final key only once complete (pyarrow's S3 output stream: one PUT, or one multipart upload
that becomes visible only when completed). Small files (manifest.json, _SUCCESS, the latest
pointer) are one PUT each. Moving aside is copy + delete.

The endpoint and the credentials come from the environment of the service, never from the
config, the events or the manifest: AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL; neither: AWS),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (optional) and AWS_REGION (else
AWS_DEFAULT_REGION, else us-east-1).
"""

from __future__ import annotations

import functools
import os
import posixpath
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import pyarrow.fs as pafs
import xxhash

from sluiceway.common import crash, fingerprint, layout

SCHEMES = ("s3://",)
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SPOOL_ENV = "SLUICEWAY_SPOOL_DIR"  # where object-store parts are spooled (default: the temp dir)
_BLOCK = 1 << 20


def is_object_store(destination: str) -> bool:
    return destination.startswith(SCHEMES)


def url_problem(destination: str) -> str | None:
    """Why an s3:// destination is not usable as written; None when it is."""
    rest = destination[len("s3://") :]
    bucket = rest.split("/", 1)[0]
    if not bucket:
        return "s3:// needs a bucket: s3://bucket/prefix"
    if any(c in destination for c in "?#\\") or "//" in rest or "@" in bucket:
        return "s3://bucket/prefix takes no credentials, query, fragment or empty segment"
    if any(seg in (".", "..") for seg in rest.split("/")):
        return "s3://bucket/prefix takes no '.' or '..' segment"
    return None


class PartSink(Protocol):
    """One part being written: bytes go to `file`; commit() makes the part visible under its
    final name and returns (fingerprint, size); discard() drops it (with `keep`, leaves the
    bytes under the temporary name for the caller to set aside)."""

    file: BinaryIO

    def commit(self) -> tuple[str, int]: ...

    def discard(self, *, keep: bool = False) -> None: ...


class Destination(Protocol):
    root: str

    def path(self, *parts: str) -> str: ...

    def make_dirs(self, directory: str) -> None: ...

    def open_part(self, directory: str, final_name: str) -> PartSink: ...

    def fingerprint(self, path: str) -> tuple[str, int] | None: ...

    def read_bytes(self, path: str) -> bytes | None: ...

    def put(self, path: str, data: bytes) -> None: ...

    def files(self, directory: str) -> list[str]:
        """The names of the files in `directory` and, below it, in its partition folders
        (as `key=value/name`)."""
        ...

    def set_aside(self, directory: str, target: str, names: Iterable[str]) -> list[str]: ...

    def uri(self, path: str) -> str: ...

    def arrow(self) -> pafs.FileSystem: ...


def run_dir(dest: Destination, export_name: str, run_id: str) -> str:
    return dest.path(export_name, "runs", run_id)


def quarantine_dir(dest: Destination, export_name: str, run_id: str) -> str:
    return dest.path(export_name, "_quarantine", run_id)


def latest_pointer(dest: Destination, export_name: str) -> str:
    return dest.path(export_name, "manifest.json")


def open_destination(destination: str, env: Mapping[str, str] | None = None) -> Destination:
    if is_object_store(destination):
        return ObjectStore(destination, env)
    return Local(destination)


# ---- local ----------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, making each new directory's entry durable (its parent fsynced): a part
    reported as written must survive a power cut together with the folders that hold it."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn one, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / layout.temp_name(path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def set_aside_local(run_dir: Path, target: Path, names: Iterable[str]) -> list[str]:
    moved: list[str] = []
    for name in names:
        src = run_dir / name
        if not src.is_file():
            continue
        dst = target / name
        make_dirs(dst.parent)
        os.replace(src, dst)
        moved.append(name)
    if moved:
        fsync_dir(target)
        fsync_dir(run_dir)
    return moved


def local_files(directory: Path) -> list[str]:
    """Files of `directory`, and of its subfolders as `sub/name` (a partitioned run's)."""
    try:
        return sorted(
            p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()
        )
    except FileNotFoundError:
        return []


class _LocalSink:
    def __init__(self, directory: Path, final_name: str) -> None:
        self.final = directory / final_name
        self.temp = directory / layout.temp_name(final_name)
        self.file: BinaryIO = open(self.temp, "wb")

    def commit(self) -> tuple[str, int]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)
        crash.point("worker.after_rename")
        return fingerprint.of_file(self.final)

    def discard(self, *, keep: bool = False) -> None:
        try:
            self.file.close()
        except Exception:
            pass
        if not keep:
            self.temp.unlink(missing_ok=True)


class Local:
    """A local (or mounted) directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        return str(Path(self.root, *parts))

    def make_dirs(self, directory: str) -> None:
        make_dirs(Path(directory))

    def open_part(self, directory: str, final_name: str) -> PartSink:
        return _LocalSink(Path(directory), final_name)

    def fingerprint(self, path: str) -> tuple[str, int] | None:
        p = Path(path)
        try:
            return fingerprint.of_file(p) if p.is_file() else None
        except FileNotFoundError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, path: str, data: bytes) -> None:
        write_atomic(Path(path), data)

    def files(self, directory: str) -> list[str]:
        return local_files(Path(directory))

    def set_aside(self, directory: str, target: str, names: Iterable[str]) -> list[str]:
        return set_aside_local(Path(directory), Path(target), names)

    def uri(self, path: str) -> str:
        return Path(path).resolve().as_uri()

    def arrow(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()


# ---- object store ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _s3(
    endpoint: str, access_key: str, secret_key: str, session_token: str, region: str
) -> pafs.S3FileSystem:
    kwargs: dict[str, object] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme or "https"
        kwargs["force_virtual_addressing"] = False
    if access_key:
        kwargs["access_key"] = access_key
        kwargs["secret_key"] = secret_key
        if session_token:
            kwargs["session_token"] = session_token
    return pafs.S3FileSystem(
        region=region,
        allow_bucket_creation=False,
        allow_bucket_deletion=False,
        connect_timeout=10,
        request_timeout=60,
        **kwargs,
    )


def s3_filesystem(env: Mapping[str, str] | None = None) -> pafs.S3FileSystem:
    """The S3 filesystem the environment describes (ENDPOINT_ENVS, AWS_* credentials)."""
    e = os.environ if env is None else env
    endpoint = next((e[k] for k in ENDPOINT_ENVS if e.get(k)), "")
    region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _s3(
        endpoint,
        e.get("AWS_ACCESS_KEY_ID", ""),
        e.get("AWS_SECRET_ACCESS_KEY", ""),
        e.get("AWS_SESSION_TOKEN", ""),
        region,
    )


def _upload(fs: pafs.FileSystem, source: BinaryIO, key: str) -> tuple[str, int]:
    """Copy `source` to `key` in one stream (visible only once closed); the xxh3 and size of
    the bytes sent."""
    h = xxhash.xxh3_64()
    size = 0
    halfway = os.fstat(source.fileno()).st_size // 2
    with fs.open_output_stream(key) as out:
        while block := source.read(_BLOCK):
            h.update(block)
            out.write(block)
            if size < halfway <= size + len(block) and size:  # parts over one block only
                crash.point("worker.mid_upload")
            size += len(block)
    return f"xxh3:{h.hexdigest()}", size


class _SpooledSink:
    def __init__(self, fs: pafs.FileSystem, directory: str, final_name: str) -> None:
        self._fs = fs
        self.final = posixpath.join(directory, final_name)
        self.temp = posixpath.join(directory, layout.temp_name(final_name))
        spool = os.environ.get(SPOOL_ENV) or None
        if spool:
            Path(spool).mkdir(parents=True, exist_ok=True)
        # an unnamed file (O_TMPFILE on Linux, else unlinked at once): a worker killed while
        # it spools or uploads leaves nothing on its disk
        self.file: BinaryIO = tempfile.TemporaryFile(prefix=".sluiceway-part-", dir=spool)

    def _send(self, key: str) -> tuple[str, int]:
        self.file.flush()
        self.file.seek(0)
        try:
            return _upload(self._fs, self.file, key)
        finally:
            self.file.close()  # deletes the spool file

    def commit(self) -> tuple[str, int]:
        try:
            result = self._send(self.final)
        except BaseException:
            # an upload cut short may still have been completed as a torn object: drop it (a
            # part of this attempt that no FileWritten names is a stray either way)
            try:
                self._fs.delete_file(self.final)
            except OSError:
                pass
            raise
        crash.point("worker.after_rename")
        return result

    def discard(self, *, keep: bool = False) -> None:
        if keep and not self.file.closed:
            try:
                self._send(self.temp)  # what was written so far, for the caller to set aside
                return
            except Exception:
                pass
        try:
            self.file.close()
        except Exception:
            pass


class ObjectStore:
    """`s3://bucket/prefix` on AWS or any S3-compatible server."""

    def __init__(self, destination: str, env: Mapping[str, str] | None = None) -> None:
        if problem := url_problem(destination):
            raise ValueError(f"{destination}: {problem}")
        self.root = destination.rstrip("/")
        self._base = self.root[len("s3://") :]
        self._env = env
        self._fs: pafs.S3FileSystem | None = None

    def arrow(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = s3_filesystem(self._env)
        return self._fs

    def path(self, *parts: str) -> str:
        return posixpath.join(self._base, *parts)

    def make_dirs(self, directory: str) -> None:
        pass  # keys need no folders

    def open_part(self, directory: str, final_name: str) -> PartSink:
        return _SpooledSink(self.arrow(), directory, final_name)

    def _info(self, path: str) -> pafs.FileInfo:
        return self.arrow().get_file_info(path)

    def fingerprint(self, path: str) -> tuple[str, int] | None:
        if self._info(path).type != pafs.FileType.File:
            return None
        h = xxhash.xxh3_64()
        size = 0
        try:
            with self.arrow().open_input_stream(path) as f:
                while block := f.read(_BLOCK):
                    h.update(block)
                    size += len(block)
        except FileNotFoundError:
            return None
        return f"xxh3:{h.hexdigest()}", size

    def read_bytes(self, path: str) -> bytes | None:
        if self._info(path).type != pafs.FileType.File:
            return None
        try:
            with self.arrow().open_input_stream(path) as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    def put(self, path: str, data: bytes) -> None:
        with self.arrow().open_output_stream(path) as out:  # one PUT: whole or nothing
            out.write(data)

    def files(self, directory: str) -> list[str]:
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
        infos = self.arrow().get_file_info(selector)
        prefix = directory.rstrip("/") + "/"
        return sorted(
            i.path[len(prefix) :] if i.path.startswith(prefix) else i.base_name
            for i in infos
            if i.type == pafs.FileType.File
        )

    def set_aside(self, directory: str, target: str, names: Iterable[str]) -> list[str]:
        moved: list[str] = []
        fs = self.arrow()
        for name in names:
            src = posixpath.join(directory, name)
            if fs.get_file_info(src).type != pafs.FileType.File:
                continue
            fs.copy_file(src, posixpath.join(target, name))
            fs.delete_file(src)
            moved.append(name)
        return moved

    def uri(self, path: str) -> str:
        return f"s3://{path}"
