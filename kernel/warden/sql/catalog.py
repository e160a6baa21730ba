"""The catalog: which tables and views exist, their columns, and view definitions.

A catalog is what lets analysis resolve ``SELECT *``, an unqualified column and a
view back to base columns. It is loaded from the live database (see
``warden.sql.catalog_live``) or from a JSON/YAML file for offline use, and is
immutable: a refresh builds a new one (``version`` changes, caches key on it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warden.errors import CatalogError

Dialect = str  # "postgres" | "duckdb"
SUPPORTED_DIALECTS = ("postgres", "duckdb")


@dataclass(frozen=True)
class Relation:
    """A table or view. Names are stored exactly as the database spells them."""

    schema: str
    name: str
    columns: tuple[str, ...]
    kind: str = "table"  # "table" | "view"
    definition: str | None = None  # the view's SELECT, for views
    # The table this one is a partition or an inheritance child of (``schema.table``):
    # its rows are the parent's rows, so the parent's policy holds for it.
    parent: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Catalog:
    """Relations by ``(schema, name)`` plus the default search path."""

    dialect: Dialect
    relations: Mapping[tuple[str, str], Relation]
    search_path: tuple[str, ...] = ("public",)
    version: str = field(default="")
    # Functions the database defines outside the engine (user-defined, macros,
    # extensions): ``schema.name`` and the bare ``name``. A call of one is opaque.
    user_functions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.dialect not in SUPPORTED_DIALECTS:
            raise CatalogError(
                f"unsupported dialect {self.dialect!r}; use one of {', '.join(SUPPORTED_DIALECTS)}"
            )
        if not self.version:
            object.__setattr__(self, "version", _fingerprint(self))

    @classmethod
    def build(
        cls,
        dialect: Dialect,
        relations: Iterable[Relation],
        search_path: Iterable[str] | None = None,
        user_functions: Iterable[tuple[str, str]] = (),
    ) -> Catalog:
        rels: dict[tuple[str, str], Relation] = {}
        for rel in relations:
            rel = _normalise_relation(rel, dialect)
            rels[(rel.schema, rel.name)] = rel
        default_path = ("public",) if dialect == "postgres" else ("main",)
        path = tuple(search_path) if search_path else default_path
        if dialect == "duckdb":
            path = tuple(p.lower() for p in path)
        names: set[str] = set()
        for schema, name in user_functions:
            if dialect == "duckdb":
                schema, name = schema.lower(), name.lower()
            names |= {name, f"{schema}.{name}"}
        return cls(dialect=dialect, relations=rels, search_path=path, user_functions=frozenset(names))

    def get(self, schema: str, name: str) -> Relation | None:
        if self.dialect == "duckdb":
            schema, name = schema.lower(), name.lower()
        return self.relations.get((schema, name))

    def root(self, rel: Relation) -> Relation:
        """The topmost parent of a partition or inheritance child (itself otherwise)."""
        seen = {rel.qualified}
        while rel.parent:
            schema, _, name = rel.parent.partition(".")
            up = self.get(schema, name)
            if up is None or up.qualified in seen or len(seen) > 32:
                break
            seen.add(up.qualified)
            rel = up
        return rel

    def resolve(self, name: str, search_path: Iterable[str] | None = None) -> Relation | None:
        """The relation an unqualified ``name`` means under ``search_path``."""
        for schema in search_path or self.search_path:
            rel = self.get(schema, name)
            if rel is not None:
                return rel
        return None

    def schema_mapping(self) -> dict[str, dict[str, dict[str, str]]]:
        """``{schema: {table: {column: type}}}`` for sqlglot (types are not needed)."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for (schema, name), rel in self.relations.items():
            out.setdefault(schema, {})[name] = dict.fromkeys(rel.columns, "text")
        return out

    def with_search_path(self, search_path: Iterable[str]) -> Catalog:
        path = tuple(search_path)
        if self.dialect == "duckdb":
            path = tuple(p.lower() for p in path)
        return Catalog(self.dialect, self.relations, path, user_functions=self.user_functions)

    def to_json(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for rel in self.relations.values():
            if rel.kind == "view":
                tables[rel.qualified] = {"columns": list(rel.columns), "definition": rel.definition}
            elif rel.parent:
                tables[rel.qualified] = {"columns": list(rel.columns), "parent": rel.parent}
            else:
                tables[rel.qualified] = list(rel.columns)
        out: dict[str, Any] = {"dialect": self.dialect, "search_path": list(self.search_path), "tables": tables}
        if self.user_functions:
            out["functions"] = sorted(f for f in self.user_functions if "." in f)
        return out


def _normalise_relation(rel: Relation, dialect: Dialect) -> Relation:
    # DuckDB resolves identifiers case-insensitively, even quoted ones: store lower case.
    if dialect != "duckdb":
        return rel
    return Relation(
        schema=rel.schema.lower(),
        name=rel.name.lower(),
        columns=tuple(c.lower() for c in rel.columns),
        kind=rel.kind,
        definition=rel.definition,
        parent=rel.parent.lower() if rel.parent else None,
    )


def _fingerprint(catalog: Catalog) -> str:
    payload = json.dumps(
        [
            catalog.dialect,
            list(catalog.search_path),
            sorted((k[0], k[1], list(v.columns), v.kind, v.definition, v.parent) for k, v in catalog.relations.items()),
            sorted(catalog.user_functions),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def catalog_from_mapping(data: Mapping[str, Any], *, dialect: Dialect | None = None) -> Catalog:
    """Build a catalog from ``{"dialect":…, "search_path": […], "tables": {"s.t": [cols] | {…}}}``.

    A bare ``{"s.t": [cols]}`` mapping is accepted too. A view is
    ``{"columns": [...], "definition": "SELECT ..."}``.
    """
    if not isinstance(data, Mapping):
        raise CatalogError("a catalog file must hold a mapping of tables to columns")
    tables = data.get("tables", data)
    if not isinstance(tables, Mapping):
        raise CatalogError("'tables' must map 'schema.table' to a list of columns")
    dia = dialect or str(data.get("dialect", "postgres"))
    search_path = data.get("search_path")
    rels: list[Relation] = []
    functions = data.get("functions", []) if tables is not data else []
    if not isinstance(functions, list):
        raise CatalogError("'functions' must be a list of 'schema.name' user-defined functions")
    user_functions = []
    for f in functions:
        schema, _, name = str(f).rpartition(".")
        user_functions.append((schema or ("public" if dia == "postgres" else "main"), name))
    for key, spec in tables.items():
        if key in ("dialect", "search_path", "functions"):
            continue
        parts = str(key).split(".")
        if len(parts) == 1:
            schema, name = ("public" if dia == "postgres" else "main"), parts[0]
        elif len(parts) == 2:
            schema, name = parts
        else:
            raise CatalogError(f"table name {key!r} must be 'schema.table' or 'table'")
        if isinstance(spec, list):
            rels.append(Relation(schema, name, tuple(str(c) for c in spec)))
        elif isinstance(spec, Mapping):
            cols = spec.get("columns")
            if not isinstance(cols, list):
                raise CatalogError(f"{key}: 'columns' must be a list")
            definition = spec.get("definition")
            kind = "view" if definition else str(spec.get("kind", "table"))
            parent = spec.get("parent")
            rels.append(
                Relation(schema, name, tuple(str(c) for c in cols), kind, definition or None, str(parent) if parent else None)
            )
        else:
            raise CatalogError(f"{key}: expected a list of columns or a mapping")
    if search_path is not None and not isinstance(search_path, list):
        raise CatalogError("'search_path' must be a list of schema names")
    return Catalog.build(dia, rels, search_path, user_functions)


def load_catalog_file(path: str | Path, *, dialect: Dialect | None = None) -> Catalog:
    """Read a JSON or YAML catalog file (see ``catalog_from_mapping``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {p}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CatalogError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
    return catalog_from_mapping(data, dialect=dialect)
