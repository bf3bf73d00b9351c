"""`sluiceway doctor`: can each export of a config run from here, and if not, why?

Per export: the config (and its url_env variable), the source (reachable, the table there,
readable by the user), the destination (writable); once: the stack (planner and tracker
answer their health checks). A source's URL is never printed: problems name its variable."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sluiceway.common.config import ConfigError, check_spec, load_file
from sluiceway.common.domain.events import ExportSpec
from sluiceway.common.sources import SourceError, open_source

# SQLSTATE (or its class) -> what it means for the user, with {var} and {rel} to fill in
_PG_HINTS = {
    "08": "cannot reach the database server named in {var} (check its host and port)",
    "28P01": "the server refused the password in {var}",
    "28000": "the server refused the login of {var}'s user (role or pg_hba.conf)",
    "3D000": "the database named in {var} does not exist",
    "42501": "the user of {var} may not read {rel} (GRANT SELECT ON {rel} TO that user)",
    "42P01": "no table {rel} in the database of {var}",
    "42703": "a column of the export is not in {rel}",
    "57P03": "the database server is starting up or shutting down",
}
# fields of the config that a source problem points at, by SQLSTATE
_PG_FIELDS = {"42P01": "table", "42501": "table", "42703": "columns"}
# MySQL's error number -> the same, with the field it points at
_MYSQL_HINTS = {
    2002: ("source.url_env", "cannot reach the database server named in {var}"),
    2003: ("source.url_env", "cannot reach the database server named in {var}"),
    1045: ("source.url_env", "the server refused the login of {var}'s user (its password)"),
    1044: ("source.url_env", "the user of {var} may not use the database named there"),
    1049: ("source.url_env", "the database named in {var} does not exist"),
    1142: ("table", "the user of {var} may not read {rel} (GRANT SELECT ON {rel} TO it)"),
    1146: ("table", "no table {rel} in the database of {var}"),
    1054: ("columns", "a column of the export is not in {rel}"),
}


@dataclass(frozen=True)
class Check:
    what: str  # config | source | destination | stack
    ok: bool
    detail: str


@dataclass
class ExportReport:
    export: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)


def relation_of(spec: ExportSpec) -> str:
    return spec.table or "the export's query"


def source_problem(spec: ExportSpec, exc: SourceError) -> tuple[str, str]:
    """(config field, one-line problem) for a source failure: what it means, then the
    driver's redacted reason. PostgreSQL's by SQLSTATE, MySQL's by error number, SQLite's by
    its message."""
    rel, reason = relation_of(spec), str(exc)
    if spec.source.engine == "postgres":
        code = exc.sqlstate
        hint = _PG_HINTS.get(code) or _PG_HINTS.get(code[:2], "")
        where = _PG_FIELDS.get(code, "source.url_env")
        if hint:
            text = hint.format(rel=rel, var=f"${spec.source.url_env}")
            return where, f"{text} ({reason})"
        return "source.url_env", reason
    if spec.source.engine == "mysql":
        where, hint = _MYSQL_HINTS.get(exc.code, ("source.url_env", ""))
        if hint:
            text = hint.format(rel=rel, var=f"${spec.source.url_env}")
            return where, f"{text} ({reason})"
        return "source.url_env", reason
    low = reason.lower()
    if "no such table" in low:
        return "table", f"no table {rel} in {spec.source.path} ({reason})"
    if "no such column" in low:
        return "columns", reason
    if "not a database" in low:
        return "source.path", f"cannot read {spec.source.path} as a SQLite database ({reason})"
    if "unable to open" in low:
        return "source.path", f"cannot open {spec.source.path} for reading ({reason})"
    return "source.path", reason


def located(path: str, spec: ExportSpec, where: str, text: str) -> str:
    """`FILE: export 'X': field 'F': text`, as every config error reads."""
    return str(ConfigError(text, file=path, export=spec.name, field=where))


def check_source(spec: ExportSpec, env: Mapping[str, str], path: str = "") -> Check:
    """Connect and read the export's columns (`SELECT ... LIMIT 0` on PostgreSQL): that needs
    the server, the database, the table and the SELECT privilege."""
    try:
        source = open_source(spec, env)
        try:
            schema = source.schema_of(spec)
        finally:
            source.close()
    except SourceError as exc:
        return Check("source", False, located(path, spec, *source_problem(spec, exc)))
    what = f"${spec.source.url_env}" if spec.source.url_env else spec.source.path
    return Check("source", True, f"{relation_of(spec)} readable via {what} ({len(schema)} columns)")


def check_destination(spec: ExportSpec, env: Mapping[str, str], path: str = "") -> Check:
    """Write, read back and remove a probe object where the export's runs go."""
    from sluiceway.common.destination import open_destination

    dest = spec.destination
    try:
        d = open_destination(dest, env)
        directory = d.path(spec.name)
        d.make_dirs(directory)
        probe = d.path(spec.name, f".doctor-{secrets.token_hex(4)}")
        d.put(probe, b"sluiceway doctor\n")
        if d.read_bytes(probe) != b"sluiceway doctor\n":
            return Check("destination", False, f"{dest}: a probe file did not read back")
        d.arrow().delete_file(probe)
    except Exception as exc:  # any filesystem or object-store failure is the finding
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        problem = f"cannot write to {dest}: {reason}"
        return Check("destination", False, located(path, spec, "destination", problem))
    return Check("destination", True, f"{d.uri(directory)} writable")


def check_stack(control: str, tracker: str, timeout_s: float = 3.0) -> list[Check]:
    """Each API's gRPC health check."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    out = []
    for name, addr in (("planner", control), ("tracker", tracker)):
        try:
            with grpc.insecure_channel(addr) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            out.append(Check("stack", status == "SERVING", f"{name} at {addr}: {status}"))
        except grpc.RpcError as exc:
            out.append(Check("stack", False, f"{name} at {addr}: {exc.code().name}"))
    return out


@dataclass
class Report:
    config: str
    config_error: str = ""
    exports: list[ExportReport] = field(default_factory=list)
    stack: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.config_error and all(e.ready for e in self.exports)


def diagnose(
    path: str,
    *,
    only: str = "",
    env: Mapping[str, str] | None = None,
    stack: Callable[[], list[Check]] | None = None,
) -> Report:
    """Every check of every export (or of `only`); `stack` gives the stack's checks."""
    e = dict(os.environ if env is None else env)
    report = Report(config=path)
    try:
        specs = load_file(path)  # the document's shape; each export's environment below
    except ConfigError as exc:
        report.config_error = str(exc)
        return report
    if only and only not in specs:
        known = ", ".join(sorted(specs))
        report.config_error = f"{path}: export {only!r} is not in the config (exports: {known})"
        return report
    for name, spec in specs.items():
        if only and name != only:
            continue
        rep = ExportReport(name)
        report.exports.append(rep)
        try:
            check_spec(spec, env=e, file_name=path)
        except ConfigError as exc:
            rep.checks.append(Check("config", False, str(exc)))
            continue
        rep.checks.append(Check("config", True, f"{spec.mode} export of {relation_of(spec)}"))
        rep.checks.append(check_source(spec, e, path))
        rep.checks.append(check_destination(spec, e, path))
    if stack is not None:
        report.stack = stack()
    return report


def render(report: Report) -> str:
    if report.config_error:
        return f"config   FAIL  {report.config_error}\nverdict: the config cannot be used"
    lines = []
    for rep in report.exports:
        lines.append(f"export {rep.export!r}")
        for c in rep.checks:
            lines.append(f"  {c.what:<12} {'ok  ' if c.ok else 'FAIL'}  {c.detail}")
        verdict = "ready" if rep.ready else "NOT READY"
        failed = ", ".join(c.what for c in rep.checks if not c.ok)
        lines.append(f"  verdict: {verdict}" + (f" ({failed})" if failed else ""))
    if report.stack:
        lines.append("stack")
        for c in report.stack:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.detail}")
    return "\n".join(lines)
