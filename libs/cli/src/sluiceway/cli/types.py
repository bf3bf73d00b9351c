"""`sluiceway types`: each column of an export, from the source's type to Arrow and Parquet."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.common.domain.events import ExportSpec, SchemaField
from sluiceway.common.sources import arrow_schema, open_source

_UNITS = {"milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns"}
HEADER = ("column", "source type", "arrow type", "parquet type", "nullable")
ENGINES = {"postgres": "PostgreSQL", "mysql": "MySQL", "sqlite": "SQLite"}


@dataclass(frozen=True)
class TypeRow:
    column: str
    source_type: str
    arrow_type: str
    parquet_type: str
    nullable: bool


def _logical(physical: str, logical_json: str) -> str:
    """A Parquet leaf as one short word: its logical type, else its physical type."""
    lt = json.loads(logical_json)
    kind = lt.get("Type", "None")
    if kind == "Int":
        return f"INT({lt['bitWidth']}{'' if lt['isSigned'] else ', unsigned'})"
    if kind == "Decimal":
        return f"DECIMAL({lt['precision']}, {lt['scale']})"
    if kind in ("Timestamp", "Time"):
        unit = _UNITS.get(lt["timeUnit"], lt["timeUnit"])
        return f"{kind.upper()}({unit}{', UTC' if lt['isAdjustedToUTC'] else ''})"
    if kind == "None":
        return physical
    return str(kind).upper()


def parquet_types(schema: pa.Schema) -> dict[str, str]:
    """The Parquet type the part writer's library gives each top-level column of `schema`
    (learnt by writing an empty file, not by a table of our own): LIST<...> for a list."""
    buf = io.BytesIO()
    pq.ParquetWriter(buf, schema).close()
    pschema = pq.ParquetFile(io.BytesIO(buf.getvalue())).schema
    out: dict[str, str] = {}
    for i in range(len(pschema)):
        leaf = pschema.column(i)
        root, *rest = leaf.path.split(".")
        word = _logical(leaf.physical_type, leaf.logical_type.to_json())
        out[root] = f"LIST<{word}>" if rest else word
    return out


def type_rows(fields: Sequence[SchemaField], fmt: str = "parquet") -> list[TypeRow]:
    """One row per exported column; in a CSV export every value is text in the file."""
    schema = arrow_schema(fields)
    parquet = parquet_types(schema) if fmt != "csv" else {}
    return [
        TypeRow(
            f.name,
            f.source_type,
            str(schema.field(f.name).type),
            parquet.get(f.name, "(csv text)"),
            f.nullable,
        )
        for f in fields
    ]


def describe_export(spec: ExportSpec, env: Mapping[str, str] | None = None) -> list[TypeRow]:
    """Introspect the export's source here, with the source code the planner runs (the URL
    comes from the variable named by url_env), and map its columns."""
    source = open_source(spec, env)
    try:
        schema_of = getattr(source, "schema_of", None)
        fields = schema_of(spec) if schema_of is not None else source.introspect(spec).schema
    finally:
        source.close()
    return type_rows(fields, spec.format or "parquet")


def render_text(rows: Sequence[TypeRow], engine: str) -> str:
    header = (HEADER[0], f"{ENGINES.get(engine, engine)} type", *HEADER[2:])
    cells = [header] + [
        (r.column, r.source_type, r.arrow_type, r.parquet_type, "yes" if r.nullable else "no")
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_json(rows: Sequence[TypeRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
