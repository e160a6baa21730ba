"""Analyse a cell of SQL: split, classify, resolve objects, usage and lineage.

``analyze_cell`` is the public entry point. Results are cached by the cell's
fingerprint (its shape with literals replaced), so the same query with other
literal values is analysed once; literals that change meaning (a ``FROM 'file'``,
a ``LIMIT``) are part of the cache check.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Final

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.tokens import Token, TokenType  # type: ignore[attr-defined]

from warden.sql.catalog import Catalog
from warden.sql.functions import annotate_calls
from warden.sql.kinds import statement_kind, strongest_kind
from warden.sql.lineage import (
    SCHEMAS,
    QueryLineage,
    complete_row_source_aliases,
    resolve_table_schemas,
    statement_calls,
)
from warden.sql.model import (
    CellAnalysis,
    ColumnRef,
    ColumnUse,
    ColumnWrite,
    LiteralSpan,
    OutputColumn,
    StatementAnalysis,
    Unresolved,
    Usage,
)
from warden.sql.settings import normal_name, setting_allowed

# sqlglot warns on every statement it parses as a generic Command; those are
# reported as unresolved here instead.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

LITERAL_TOKENS = frozenset(
    {
        TokenType.STRING, TokenType.NUMBER, TokenType.NATIONAL_STRING, TokenType.HEX_STRING,
        TokenType.BIT_STRING, TokenType.BYTE_STRING, TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING, TokenType.UNICODE_STRING,
    }
)  # fmt: skip

_CACHE_SIZE = 2048


@dataclass(frozen=True)
class _Tokens:
    tokens: list[Token]
    chunks: list[tuple[int, int]]  # token index ranges [start, end) of each statement
    literal_starts: dict[int, int]  # char offset of a literal token -> its ordinal
    literal_tokens: list[Token]
    fingerprint: str
    statement_hash: str
    has_command: bool


def tokenize_cell(sql: str, dialect: str) -> _Tokens:
    d = Dialect.get_or_raise(dialect)
    tokens = d.tokenize(sql)
    chunks: list[tuple[int, int]] = []
    start = 0
    for i, tok in enumerate(tokens):
        if tok.token_type == TokenType.SEMICOLON:
            if i > start:
                chunks.append((start, i))
            start = i + 1
    if start < len(tokens):
        chunks.append((start, len(tokens)))
    shape: list[str] = []
    exact: list[str] = []
    literal_starts: dict[int, int] = {}
    literal_tokens: list[Token] = []
    has_command = False
    for tok in tokens:
        tt = tok.token_type
        if tt in LITERAL_TOKENS:
            literal_starts[tok.start] = len(literal_tokens)
            literal_tokens.append(tok)
            shape.append("?")
            exact.append(f"{tt.name}:{tok.text}")
            continue
        if tt == TokenType.VAR:
            text = tok.text.lower()
        elif tt == TokenType.IDENTIFIER:
            text = '"' + tok.text + '"'
        else:
            text = tok.text.upper()
            if tt in (TokenType.SET, TokenType.COMMAND, TokenType.EXECUTE):
                has_command = True
        shape.append(text)
        exact.append(text)
    return _Tokens(
        tokens=tokens,
        chunks=chunks,
        literal_starts=literal_starts,
        literal_tokens=literal_tokens,
        fingerprint=_digest(dialect, shape),
        statement_hash=_digest(dialect, exact),
        has_command=has_command,
    )


def _digest(dialect: str, parts: list[str]) -> str:
    return hashlib.sha256((dialect + "\x1e" + "\x1f".join(parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _CacheEntry:
    analysis: CellAnalysis
    structural: tuple[tuple[int, str], ...]  # (literal ordinal, text) that must match
    literal_ordinals: tuple[tuple[tuple[int, frozenset[ColumnRef]], ...], ...]  # per statement


class AnalysisCache:
    """A small thread-safe LRU of analyses keyed by fingerprint, catalog and search path."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str, tuple[str, ...]], list[_CacheEntry]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, tuple[str, ...]], toks: _Tokens) -> _CacheEntry | None:
        with self._lock:
            entries = self._entries.get(key)
            if entries is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            for entry in entries:
                if all(
                    o < len(toks.literal_tokens) and toks.literal_tokens[o].text == text
                    for o, text in entry.structural
                ):
                    self.hits += 1
                    return entry
            self.misses += 1
            return None

    def put(self, key: tuple[str, str, tuple[str, ...]], entry: _CacheEntry) -> None:
        with self._lock:
            entries = self._entries.setdefault(key, [])
            if len(entries) < 8:
                entries.append(entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = AnalysisCache()


def analyze_cell(
    sql: str,
    catalog: Catalog,
    *,
    search_path: tuple[str, ...] | None = None,
    cache: AnalysisCache | None = CACHE,
) -> CellAnalysis:
    """Analyse every statement of a cell against ``catalog``. Never raises on bad SQL:
    problems come back as ``Unresolved`` entries, which callers treat as deny."""
    dialect = catalog.dialect
    path = tuple(search_path) if search_path else catalog.search_path
    try:
        toks = tokenize_cell(sql, dialect)
    except TokenError as exc:
        return _broken(sql, dialect, "parse-error", f"the SQL could not be tokenised: {exc}")
    key = (toks.fingerprint, catalog.version, path)
    if cache is not None and not toks.has_command:
        entry = cache.get(key, toks)
        if entry is not None:
            return _rebind(entry, sql, toks)
    analysis, structural = _analyse(sql, toks, catalog, path)
    if cache is not None and not toks.has_command and not analysis.unresolved:
        analysis = replace(analysis, reuse_key=(key, structural))
        ordinals = tuple(
            tuple(
                (toks.literal_starts[span.start], span.columns)
                for span in st.literals
                if span.start in toks.literal_starts
            )
            for st in analysis.statements
        )
        cache.put(key, _CacheEntry(analysis, structural, ordinals))
    return analysis


def _rebind(entry: _CacheEntry, sql: str, toks: _Tokens) -> CellAnalysis:
    """A cached analysis with this cell's own text, statement texts and literal positions."""
    statements = []
    for st, ordinals, (first, last) in zip(
        entry.analysis.statements, entry.literal_ordinals, toks.chunks, strict=False
    ):
        spans = tuple(
            LiteralSpan(toks.literal_tokens[o].start, toks.literal_tokens[o].end + 1, cols)
            for o, cols in ordinals
        )
        text = sql[toks.tokens[first].start : toks.tokens[last - 1].end + 1]
        statements.append(replace(st, sql=text, literals=spans))
    return replace(
        entry.analysis,
        sql=sql,
        statements=tuple(statements),
        statement_hash=toks.statement_hash,
    )


def _broken(sql: str, dialect: str, code: str, message: str, line: int | None = None, col: int | None = None) -> CellAnalysis:
    problem = Unresolved(code, message, line, col)
    digest = hashlib.sha256(sql.encode()).hexdigest()[:32]
    return CellAnalysis(sql, dialect, (), digest, digest, (problem,))


def _analyse(
    sql: str, toks: _Tokens, catalog: Catalog, path: tuple[str, ...]
) -> tuple[CellAnalysis, tuple[tuple[int, str], ...]]:
    d = Dialect.get_or_raise(catalog.dialect)
    statements: list[StatementAnalysis] = []
    cell_problems: list[Unresolved] = []
    structural: set[int] = set()
    settings: dict[str, str] = {}  # SET name = value earlier in the cell (search_path apart)
    for index, (first, last) in enumerate(toks.chunks):
        chunk = toks.tokens[first:last]
        text = sql[chunk[0].start : chunk[-1].end + 1]
        try:
            parsed = d.parser().parse(chunk, sql)
        except ParseError as exc:
            err = exc.errors[0] if exc.errors else {}
            cell_problems.append(
                Unresolved(
                    "parse-error",
                    f"statement {index + 1} could not be parsed: {err.get('description', str(exc))}",
                    err.get("line"),
                    err.get("col"),
                )
            )
            statements.append(StatementAnalysis(index, "other", text, unresolved=(cell_problems[-1],)))
            continue
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            # The parser itself broke on hostile text: still a parse error, never a crash.
            first_tok = chunk[0]
            cell_problems.append(
                Unresolved(
                    "parse-error",
                    f"statement {index + 1} could not be parsed ({type(exc).__name__})",
                    first_tok.line,
                    first_tok.col,
                )
            )
            statements.append(StatementAnalysis(index, "other", text, unresolved=(cell_problems[-1],)))
            continue
        stmt = parsed[0] if parsed else None
        if stmt is None:
            continue
        structural |= _structural_literals(stmt, toks)
        st = analyse_statement(stmt, index, text, catalog, path, source=sql)
        if settings:
            st = replace(st, settings=tuple(sorted(settings.items())))
        if st.kind == "set" and not st.unresolved:
            path = _search_path_after_set(stmt, path, catalog) or path
            if _is_reset(stmt, "search_path"):
                path = catalog.search_path
            _settings_after_set(stmt, settings, catalog.dialect)
        statements.append(st)
    analysis = CellAnalysis(
        sql=sql,
        dialect=catalog.dialect,
        statements=tuple(statements),
        fingerprint=toks.fingerprint,
        statement_hash=toks.statement_hash,
        unresolved=tuple(cell_problems),
    )
    pinned = tuple(sorted((o, toks.literal_tokens[o].text) for o in structural))
    return analysis, pinned


def _structural_literals(stmt: exp.Expr, toks: _Tokens) -> set[int]:
    """Literal tokens that are not plain values: the parser used them as names, or
    they are limits. The cache only reuses an analysis when these are unchanged."""
    value_starts: set[int] = set()
    limits: set[int] = set()
    for lit in stmt.find_all(exp.Literal):
        start = lit.meta.get("start")
        if isinstance(start, int):
            value_starts.add(start)
            if lit.find_ancestor(exp.Limit, exp.Fetch, exp.Offset) is not None:
                limits.add(start)
    out = set()
    for start, ordinal in toks.literal_starts.items():
        if start not in value_starts or start in limits:
            out.add(ordinal)
    return out


_COMMAND_SET = re.compile(r"^\s*(?:session\s+|local\s+)?(time\s+zone|[A-Za-z_][\w.]*|\"[^\"]+\")\s*(?:to|=)?\s*(.*?)\s*;?\s*$", re.I | re.S)


def _is_reset(stmt: exp.Expr, name: str) -> bool:
    if isinstance(stmt, exp.Command) and str(stmt.this).upper() == "RESET":
        body = stmt.expression.name if isinstance(stmt.expression, exp.Literal) else ""
        return normal_name(body) in (name, "all")
    return False


def _settings_after_set(stmt: exp.Expr, settings: dict[str, str], dialect: str) -> None:
    """Record what a (safe, already checked) SET or RESET puts in force for the
    statements after it in the cell. ``search_path`` is tracked apart."""
    if isinstance(stmt, exp.Command):
        word = str(stmt.this).upper()
        body = stmt.expression.name if isinstance(stmt.expression, exp.Literal) else ""
        if word == "RESET":
            name = normal_name(body)
            if name == "all":
                settings.clear()
            settings.pop(name, None)
            return
        m = _COMMAND_SET.match(body)
        if m and normal_name(m.group(1)) != "search_path":
            settings[normal_name(m.group(1))] = _unquote(m.group(2))
        return
    if isinstance(stmt, exp.Set):
        for item in stmt.expressions:
            if isinstance(item, exp.SetItem) and isinstance(item.this, exp.EQ):
                target, value = item.this.this, item.this.expression
                name = ".".join(p.name for p in target.parts) if isinstance(target, exp.Column) else target.sql(dialect=dialect)
                if normal_name(name) == "search_path":
                    continue
                text = value.name if isinstance(value, exp.Literal) and value.is_string else value.sql(dialect=dialect)
                settings[normal_name(name)] = text


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


_SEARCH_PATH = re.compile(r"^\s*(?:session\s+|local\s+)?search_path\s*(?:to|=)\s*(.+)$", re.I | re.S)


def _search_path_after_set(stmt: exp.Expr, path: tuple[str, ...], catalog: Catalog) -> tuple[str, ...] | None:
    text = stmt.sql(dialect=catalog.dialect)
    text = re.sub(r"^\s*SET\s+", "", text, flags=re.I)
    m = _SEARCH_PATH.match(text)
    if not m:
        return None
    names = []
    for part in m.group(1).split(","):
        name = part.strip().strip(";").strip()
        if name.startswith(("'", '"')) and name.endswith(("'", '"')):
            name = name[1:-1]
        elif catalog.dialect == "postgres":
            name = name.lower()
        if name and name.upper() != "DEFAULT":
            names.append(name)
    return tuple(names) or None


# -- statements ------------------------------------------------------------------------

_DYNAMIC = {"call", "do", "execute"}


def analyse_statement(
    stmt: exp.Expr,
    index: int,
    text: str,
    catalog: Catalog,
    path: tuple[str, ...],
    *,
    source: str | None = None,
) -> StatementAnalysis:
    """Analysis of one parsed statement. ``path`` is the search path in force;
    ``source`` the text the parser's positions refer to (default ``text``)."""
    kind = statement_kind(stmt)
    base = StatementAnalysis(index=index, kind=kind, sql=text, search_path=path)
    if isinstance(stmt, exp.Command):
        return _command(stmt, base, catalog, path)
    lineage = QueryLineage(catalog, path)
    referenced: list[str] = []
    try:
        annotate_calls(stmt, text if source is None else source, catalog.dialect)
        normalize_identifiers(stmt, dialect=catalog.dialect)
        resolve_table_schemas(stmt, catalog, path)
        calls, call_problems = statement_calls(stmt, catalog)
        referenced = _referenced_relations(stmt, kind, lineage)
        complete_row_source_aliases(stmt, catalog)
        result = _dispatch(stmt, kind, base, lineage)
    except RecursionError:
        return replace(base, unresolved=(Unresolved("too-deep", "the statement is nested too deeply to analyse"),))
    except Exception as exc:
        unknown = re.match(r"Unknown column: (\S+)", str(exc))
        if unknown:
            # sqlglot's qualify met a column that no table in scope has (a typo).
            name = unknown.group(1)
            candidates = tuple(
                (rel.qualified, c)
                for rel in (catalog.get(*r.split(".", 1)) for r in referenced)
                if rel is not None
                for c in rel.columns
            )
            problem = Unresolved("unknown-column", f"cannot resolve column {name!r}", name=name, candidates=candidates)
            return replace(base, reads=tuple(referenced), unresolved=(problem,))
        message = f"the statement could not be analysed ({type(exc).__name__}: {str(exc)[:200]})"
        return replace(base, unresolved=(Unresolved("analysis-failed", message),))
    for rel in referenced:
        lineage.reads.setdefault(rel, None)
    problems = tuple(dict.fromkeys((*lineage.unresolved, *call_problems))) + result.unresolved
    if any(p.code == "unknown-table" for p in problems):
        # Columns of a table that does not exist cannot resolve either: say it once.
        problems = tuple(p for p in problems if p.code not in ("unknown-column", "unknown-columns"))
    return replace(
        result,
        reads=tuple(lineage.reads),
        uses=frozenset(lineage.uses) | result.uses,
        unresolved=problems,
        literals=tuple(dict.fromkeys(lineage.literals)) + result.literals,
        functions=tuple(dict.fromkeys((*calls, *lineage.functions, *result.functions))),
    )


_NO_READ_KINDS = frozenset({"drop", "alter", "truncate", "comment", "grant", "revoke"})


def _referenced_relations(stmt: exp.Expr, kind: str, lineage: QueryLineage) -> list[str]:
    """Every catalog relation the statement names anywhere, as a read: FROM, JOIN,
    subqueries, EXISTS, CTE bodies, set-operation branches, LATERAL, TABLESAMPLE,
    DESCRIBE. Whether a column of it is named does not matter (``count(*)`` reads
    it too). A view adds the relations its body reads. The written table of an
    INSERT or CREATE is not a read, nor are the objects of DDL."""
    if kind in _NO_READ_KINDS:
        return []
    target = stmt.this if isinstance(stmt, (exp.Insert, exp.Create)) else None
    if isinstance(target, exp.Schema):
        target = target.this
    catalog = lineage.catalog
    out: dict[str, None] = {}
    for table in stmt.find_all(exp.Table):
        if table is target or not isinstance(table.this, exp.Identifier) or not table.db:
            continue
        rel = catalog.get(table.db, table.name)
        if rel is None:
            continue
        out[rel.qualified] = None
        if rel.parent:
            out[catalog.root(rel).qualified] = None
        if rel.kind == "view" and rel.definition:
            view = SCHEMAS.view_outputs(catalog, rel, ())
            if isinstance(view, Unresolved):
                lineage.unresolved.append(view)
            else:
                out.update(dict.fromkeys(view.reads))
                lineage.functions.update(dict.fromkeys(view.functions))
    return list(out)


def _dispatch(stmt: exp.Expr, kind: str, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    if isinstance(stmt, exp.Query):
        nested: list[exp.Expr] = [
            n for n in stmt.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge) if n is not stmt  # type: ignore[comparison-overlap]
        ]
        if nested:
            return _query_with_writes(stmt, nested, base, lineage)
        into = stmt.args.get("into")
        if isinstance(into, exp.Into):
            return _select_into(stmt, into, base, lineage)
        query = lineage.qualify(stmt)
        outputs = lineage.analyse(query)
        st = replace(base, outputs=tuple(outputs), has_where=_has_where(query), limit=_limit(query), row_bound=_row_bound(query))
        if any(True for _ in query.find_all(exp.Lock)):
            # FOR UPDATE / FOR SHARE take row locks, as an UPDATE would.
            st = replace(st, kind="update")
        return st
    if isinstance(stmt, exp.Describe):
        # Column names and types of a relation: a read of it (deny_tables apply).
        return base
    if isinstance(stmt, exp.Summarize):
        return replace(
            base,
            unresolved=(
                Unresolved(
                    "engine-projection",
                    "SUMMARIZE computes min, max and samples of every column, classified ones too; "
                    "use aggregates on the columns you may see",
                ),
            ),
        )
    if isinstance(stmt, exp.Insert):
        return _insert(stmt, base, lineage)
    if isinstance(stmt, (exp.Update, exp.Delete)):
        return _update_delete(stmt, base, lineage)
    if isinstance(stmt, exp.Merge):
        return _merge(stmt, base, lineage)
    if isinstance(stmt, exp.Create):
        return _create(stmt, base, lineage)
    if isinstance(stmt, exp.Copy):
        target = _table_name(stmt.this) if isinstance(stmt.this, exp.Table) else "?"
        return replace(
            base,
            writes=(target,) if stmt.args.get("kind") else (),
            unresolved=(
                Unresolved(
                    "copy",
                    "COPY moves data outside the gateway's analysis and masking; "
                    "use SELECT (results are returned masked) or INSERT ... SELECT",
                ),
            ),
        )
    if isinstance(stmt, (exp.Drop, exp.Alter, exp.TruncateTable, exp.Comment, exp.Grant, exp.Revoke)):
        tables = [t for t in stmt.find_all(exp.Table) if isinstance(t.this, exp.Identifier)]
        return replace(base, writes=tuple(dict.fromkeys(_table_name(t) for t in tables)))
    if isinstance(stmt, exp.Set):
        return _set(stmt, base, lineage.catalog)
    if isinstance(stmt, (exp.Transaction, exp.Commit, exp.Rollback)):
        return base
    if kind == "other":
        return replace(
            base,
            unresolved=(Unresolved("unsupported-statement", f"{stmt.key.upper()} statements are not supported by the gateway"),),
        )
    return base


def _query_with_writes(
    stmt: exp.Query, nested: list[exp.Expr], base: StatementAnalysis, lineage: QueryLineage
) -> StatementAnalysis:
    """A query with data-modifying CTEs (``WITH d AS (DELETE ... RETURNING *) SELECT``).

    Its kind is the strongest kind inside it and its writes are those of each
    nested statement, decided like the statement on its own. For the outer query's
    lineage, each DELETE/UPDATE becomes the SELECT of the rows it touches
    (RETURNING lists them), so what it returns is masked like a read."""
    writes: list[str] = []
    column_writes: list[ColumnWrite] = []
    problems: list[Unresolved] = []
    kinds = [base.kind]
    has_where = True
    for dml in nested:
        kind = statement_kind(dml)
        kinds.append(kind)
        sub_base = replace(base, kind=kind)
        if isinstance(dml, exp.Insert):
            sub = _insert(dml, sub_base, lineage)
        elif isinstance(dml, (exp.Update, exp.Delete)):
            sub = _update_delete(dml, sub_base, lineage)
            has_where = has_where and sub.has_where
        else:
            sub = _merge(dml, sub_base, lineage)  # type: ignore[arg-type]
        writes.extend(sub.writes)
        column_writes.extend(sub.column_writes)
        problems.extend(sub.unresolved)
        returning = dml.args.get("returning")
        if isinstance(dml, (exp.Insert, exp.Merge)) and returning is not None:
            problems.append(
                Unresolved(
                    "unsupported-query",
                    f"{kind.upper()} ... RETURNING inside a WITH: the returned rows cannot be traced; "
                    "run the statement on its own",
                )
            )
        dml.replace(_rows_touched(dml))
    query = lineage.qualify(stmt)
    outputs = lineage.analyse(query)
    return replace(
        base,
        kind=strongest_kind(kinds),
        outputs=tuple(outputs),
        writes=tuple(dict.fromkeys(writes)),
        column_writes=tuple(column_writes),
        has_where=has_where,
        limit=_limit(query),
        unresolved=tuple(problems),
    )


def _select_into(stmt: exp.Query, into: exp.Into, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    """``SELECT ... INTO t FROM ...`` creates ``t`` from the query (PostgreSQL's CREATE
    TABLE AS): a create whose columns carry what the query read (taint), no rows out."""
    target = into.this
    if not isinstance(target, exp.Table):
        return replace(base, kind="create", unresolved=(Unresolved("unsupported-statement", "SELECT INTO target is not a table"),))
    into.pop()
    query = lineage.qualify(stmt)
    outs = lineage.analyse(query, usage=Usage.ASSIGNED)
    _relabel_projected(lineage, Usage.ASSIGNED)
    schema = target.db or lineage.search_path[0]
    writes = tuple(ColumnWrite(ColumnRef(schema, target.name, o.name), o.sources) for o in outs)
    return replace(base, kind="create", writes=(f"{schema}.{target.name}",), column_writes=writes)


def _rows_touched(dml: exp.Expr) -> exp.Expr:
    """The SELECT that lists what a nested DML statement returns (for lineage only)."""
    target = dml.this
    returning = dml.args.get("returning")
    exprs = [e.copy() for e in returning.expressions] if isinstance(returning, exp.Returning) else []
    if not isinstance(target, exp.Table) or isinstance(dml, (exp.Insert, exp.Merge)):
        return exp.select(*(exprs or [exp.Literal.number(1)])).where(exp.false())
    select = exp.select(*(exprs or [exp.Literal.number(1)])).from_(target.copy())
    from_ = dml.args.get("from_")
    if isinstance(dml, exp.Update) and isinstance(from_, exp.From):
        select = select.join(from_.this.copy())
    for using in dml.args.get("using") or []:
        select = select.join(using.copy())
    where = dml.args.get("where")
    if isinstance(where, exp.Where):
        select = select.where(where.this.copy())
    return select


def _command(stmt: exp.Command, base: StatementAnalysis, catalog: Catalog, path: tuple[str, ...]) -> StatementAnalysis:
    kind = base.kind
    word = str(stmt.this).upper()
    body = stmt.expression.name if isinstance(stmt.expression, exp.Literal) else stmt.expression.sql() if isinstance(stmt.expression, exp.Expr) else ""
    if kind in _DYNAMIC:
        return replace(
            base,
            unresolved=(Unresolved("dynamic-sql", f"{word} runs code the gateway cannot analyse (dynamic SQL or procedures)"),),
        )
    if kind == "set":
        lowered = body.lower()
        if re.match(r"^\s*(session\s+|local\s+)?(role|session\s+authorization)\b", lowered):
            return replace(base, unresolved=(Unresolved("privilege-change", f"SET {body.split()[0] if body.split() else ''} changes privileges inside the database"),))
        if word == "SET":
            m = re.match(r"^\s*(?:session\s+|local\s+)?([A-Za-z_][\w.]*|\"[^\"]+\")", body)
            name = m.group(1) if m else ""
            if name.lower() == "time" and re.match(r"^\s*(?:session\s+|local\s+)?time\s+zone\b", lowered):
                name = "time zone"
            if not setting_allowed(catalog.dialect, name):
                return replace(base, unresolved=(_unknown_setting(name),))
        return base
    if kind == "explain":
        inner_text = re.sub(r"^\s*(\([^)]*\)\s*)?", "", body)
        executes = bool(re.match(r"^\s*(\([^)]*\banalyze\b[^)]*\)|analyze\b)", body, re.I))
        inner_text = re.sub(r"^\s*((analyze|verbose|costs|buffers)\s+)*", "", inner_text, flags=re.I)
        try:
            inner = sqlglot.parse_one(inner_text, dialect=catalog.dialect)
        except (ParseError, TokenError):
            return replace(base, unresolved=(Unresolved("parse-error", "the statement after EXPLAIN could not be parsed"),))
        st = analyse_statement(inner, base.index, base.sql, catalog, path, source=inner_text)
        # EXPLAIN ANALYZE runs the statement: it is that statement, for policy.
        return replace(st, kind=st.kind if executes else "explain", outputs=() if not executes else st.outputs)
    if kind == "show":
        return base
    return replace(base, unresolved=(Unresolved("unsupported-statement", f"{word} is not a statement the gateway can analyse"),))


def _unknown_setting(name: str) -> Unresolved:
    return Unresolved(
        "setting",
        f"SET {name or '?'} is not a session setting warden knows to be safe (it may change what a query "
        "reads or reaches); see docs/policy.md for the settings a cell may change",
    )


def _set(stmt: exp.Set, base: StatementAnalysis, catalog: Catalog) -> StatementAnalysis:
    problems: list[Unresolved] = []
    for item in stmt.expressions:
        if not isinstance(item, exp.SetItem):
            continue
        if str(item.args.get("kind") or "").upper() == "VARIABLE":
            problems.append(Unresolved("setting", "SET VARIABLE keeps a value across statements, where analysis cannot follow it"))
            continue
        target = item.this.this if isinstance(item.this, exp.EQ) else item.this
        name = target.sql(dialect=catalog.dialect) if isinstance(target, exp.Expr) else str(target or "")
        if isinstance(target, exp.Column):
            name = ".".join(p.name for p in target.parts)
        if not setting_allowed(catalog.dialect, name):
            problems.append(_unknown_setting(name))
        elif isinstance(item.this, exp.Expr) and item.this.find(exp.Query) is not None:
            problems.append(Unresolved("setting", f"SET {name} to the result of a query is not supported"))
    return replace(base, unresolved=tuple(problems))


def _insert(stmt: exp.Insert, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    target_node = stmt.this
    columns: list[str] = []
    if isinstance(target_node, exp.Schema):
        columns = [c.name for c in target_node.expressions]
        target_node = target_node.this
    if not isinstance(target_node, exp.Table):
        return replace(base, unresolved=(Unresolved("unsupported-statement", "INSERT target is not a table"),))
    target = _table_name(target_node)
    rel = lineage.catalog.get(target_node.db, target_node.name) if target_node.db else None
    problems: list[Unresolved] = []
    if rel is None:
        problems.append(Unresolved("unknown-table", f"table {target} is not in the catalog"))
    if not columns and rel is not None:
        columns = list(rel.columns)
    source = stmt.expression
    writes: list[ColumnWrite] = []
    if isinstance(source, exp.Values):
        for row in source.expressions:
            values = row.expressions if isinstance(row, exp.Tuple) else [row]
            for col, value in zip(columns, values, strict=False):
                ref = _ref(target_node, col)
                lits = [n for n in value.find_all(exp.Literal)]
                lineage.bind(lits, frozenset({ref}))
        writes = [ColumnWrite(_ref(target_node, c), frozenset()) for c in columns]
    elif isinstance(source, exp.Query):
        query = lineage.qualify(source)
        outs = lineage.analyse(query, usage=Usage.ASSIGNED)
        _relabel_projected(lineage, Usage.ASSIGNED)
        writes = [
            ColumnWrite(_ref(target_node, c), out.sources)
            for c, out in zip(columns, outs, strict=False)
        ]
    elif source is not None:
        problems.append(Unresolved("unsupported-statement", "INSERT source is neither VALUES nor a query"))
    outputs = _returning(stmt, target_node, lineage, [], None)
    kind = base.kind
    conflict = stmt.args.get("conflict")
    if isinstance(conflict, exp.OnConflict) and conflict.expressions:
        # ON CONFLICT DO UPDATE rewrites existing rows: an update. Coarse but safe:
        # every column the statement reads may flow into each column it assigns.
        kind = "update"
        values = [eq.expression.copy() for eq in conflict.expressions if isinstance(eq, exp.EQ)]
        if values:
            # EXCLUDED is the proposed row: read here as the target's own columns.
            probe = exp.select(*values).from_(target_node.copy()).join(
                exp.Table(this=target_node.this.copy(), db=target_node.args.get("db"), alias=exp.TableAlias(this=exp.to_identifier("excluded")))
            )
            lineage.analyse(lineage.qualify(probe), usage=Usage.ASSIGNED)
            _relabel_projected(lineage, Usage.ASSIGNED)
        read = frozenset(u.column for u in lineage.uses) | frozenset(s for w in writes for s in w.sources)
        for eq in conflict.expressions:
            if isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column):
                writes.append(ColumnWrite(_ref(target_node, eq.this.name), read))
    # An upsert touches only the rows that conflict on the key: that is its WHERE.
    return replace(
        base, kind=kind, writes=(target,), column_writes=tuple(writes), outputs=outputs,
        unresolved=tuple(problems), has_where=kind == "update",
    )  # fmt: skip


def _update_delete(stmt: exp.Update | exp.Delete, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    target_node = stmt.this
    if not isinstance(target_node, exp.Table):
        return replace(base, unresolved=(Unresolved("unsupported-statement", "target is not a table"),))
    target = _table_name(target_node)
    if lineage.catalog.get(target_node.db, target_node.name) is None if target_node.db else True:
        return replace(base, writes=(target,), unresolved=(Unresolved("unknown-table", f"table {target} is not in the catalog"),))
    extra: list[exp.Expr] = []
    if isinstance(stmt, exp.Update) and stmt.args.get("from_"):
        from_ = stmt.args["from_"]
        extra.append(from_.this)
        extra.extend(j for j in (stmt.args.get("joins") or []))
    if isinstance(stmt, exp.Delete):
        extra.extend(stmt.args.get("using") or [])
    assignments: list[tuple[str, exp.Expr]] = []
    if isinstance(stmt, exp.Update):
        for eq in stmt.expressions:
            if isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column):
                assignments.append((eq.this.name, eq.expression))
    where = stmt.args.get("where")
    # Analyse as the equivalent SELECT: the assigned values as its outputs.
    select = exp.select(*[exp.alias_(v.copy(), f"__set_{i}") for i, (_, v) in enumerate(assignments)] or [exp.Literal.number(1)])
    select = select.from_(target_node.copy())
    for src in extra:
        select = select.join(src.copy())
    if isinstance(where, exp.Where):
        select = select.where(where.this.copy())
    # Keep literal positions: copies keep meta.
    query = lineage.qualify(select)
    outs = lineage.analyse(query)
    writes: list[ColumnWrite] = []
    for (col, value), out in zip(assignments, outs, strict=False):
        ref = _ref(target_node, col)
        writes.append(ColumnWrite(ref, out.sources))
        lineage.bind([n for n in value.find_all(exp.Literal)], frozenset({ref}) | out.sources)
    # Values read only to compute assignments are "assigned", not shown.
    _relabel_projected(lineage, Usage.ASSIGNED)
    outputs = _returning(stmt, target_node, lineage, extra, where)
    return replace(
        base,
        writes=(target,),
        column_writes=tuple(writes) if isinstance(stmt, exp.Update) else tuple(),
        has_where=isinstance(where, exp.Where),
        outputs=outputs,
    )


def _returning(
    stmt: exp.Expr,
    target_node: exp.Table,
    lineage: QueryLineage,
    extra: list[exp.Expr],
    where: exp.Expr | None,
) -> tuple[OutputColumn, ...]:
    returning = stmt.args.get("returning")
    if not isinstance(returning, exp.Returning):
        return ()
    select = exp.select(*[e.copy() for e in returning.expressions]).from_(target_node.copy())
    for src in extra:
        select = select.join(src.copy())
    sub = QueryLineage(lineage.catalog, lineage.search_path, schemas=lineage.schemas)
    outs = sub.analyse(sub.qualify(select))
    lineage.uses |= {ColumnUse(u.column, Usage.RETURNING) if u.usage is Usage.PROJECTED else u for u in sub.uses}
    lineage.unresolved.extend(sub.unresolved)
    for r in sub.reads:
        lineage.reads[r] = None
    return tuple(outs)


def _merge(stmt: exp.Merge, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    target_node = stmt.this
    using = stmt.args.get("using")
    if not isinstance(target_node, exp.Table) or not isinstance(using, exp.Expr):
        return replace(base, unresolved=(Unresolved("unsupported-statement", "MERGE shape not supported"),))
    target = _table_name(target_node)
    rel = lineage.catalog.get(target_node.db, target_node.name) if target_node.db else None
    if rel is None:
        return replace(base, writes=(target,), unresolved=(Unresolved("unknown-table", f"table {target} is not in the catalog"),))
    # Coarse but safe: every column of the source may flow into every written column.
    src = using.copy()
    select = exp.select(exp.Star()).from_(src)
    query = lineage.qualify(select)
    outs = lineage.analyse(query, usage=Usage.ASSIGNED)
    sources: set[ColumnRef] = set()
    for out in outs:
        sources |= out.sources
    on = stmt.args.get("on")
    if isinstance(on, exp.Expr):
        probe = exp.select(exp.Literal.number(1)).from_(target_node.copy()).join(using.copy(), on=on.copy())
        lineage.analyse(lineage.qualify(probe))
    writes = tuple(ColumnWrite(ColumnRef(rel.schema, rel.name, c), frozenset(sources)) for c in rel.columns)
    return replace(base, writes=(target,), column_writes=writes, has_where=on is not None)


def _create(stmt: exp.Create, base: StatementAnalysis, lineage: QueryLineage) -> StatementAnalysis:
    target_node = stmt.this
    if isinstance(target_node, exp.Schema):
        target_node = target_node.this
    target = _table_name(target_node) if isinstance(target_node, exp.Table) else str(target_node)
    query = stmt.expression
    kind = str(stmt.args.get("kind") or "").upper()
    if not isinstance(query, exp.Query):
        return replace(base, writes=(target,))
    qualified = lineage.qualify(query)
    outs = lineage.analyse(qualified, usage=Usage.ASSIGNED if kind == "TABLE" else Usage.PROJECTED)
    if kind == "TABLE" and isinstance(target_node, exp.Table):
        _relabel_projected(lineage, Usage.ASSIGNED)
        schema = target_node.db or lineage.search_path[0]
        writes = tuple(
            ColumnWrite(ColumnRef(schema, target_node.name, o.name), o.sources) for o in outs
        )
        return replace(base, writes=(f"{schema}.{target_node.name}",), column_writes=writes)
    return replace(base, writes=(target,))


def _relabel_projected(lineage: QueryLineage, usage: Usage) -> None:
    """Columns read to compute written values are not shown to the user: relabel them."""
    lineage.uses = {ColumnUse(u.column, usage) if u.usage is Usage.PROJECTED else u for u in lineage.uses}


def _ref(table: exp.Table, column: str) -> ColumnRef:
    return ColumnRef(table.db or "", table.name, column)


def _table_name(table: exp.Table) -> str:
    return f"{table.db}.{table.name}" if table.db else table.name


def _has_where(query: exp.Expr) -> bool:
    return isinstance(query, exp.Select) and query.args.get("where") is not None


def _limit(query: exp.Expr) -> int | None:
    """The row count a literal LIMIT / FETCH FIRST caps the result at, or None. A
    limit that caps nothing is none: ``LIMIT 10 PERCENT`` (a share, not a count) and
    ``FETCH FIRST n ROWS WITH TIES`` (every row tied with the n-th comes too)."""
    limit = query.args.get("limit")
    if not isinstance(limit, (exp.Limit, exp.Fetch)):
        return None
    options = limit.args.get("limit_options")
    if isinstance(options, exp.Expr) and (options.args.get("percent") or options.args.get("with_ties")):
        return None
    node = limit.args.get("expression") or limit.args.get("count")
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            n = int(node.this)
        except ValueError:
            return None
        return n if n >= 0 else None
    return None


# Expressions a one-row projection may be built of: none of them returns a set. (An
# unknown function might: ``unnest(...)``, ``generate_series(...)`` in a SELECT list
# turn one row into many.)
_ONE_ROW_NODES: Final = (
    exp.Alias, exp.Column, exp.Identifier, exp.Literal, exp.Star, exp.Paren, exp.Cast, exp.Binary,
    exp.Unary, exp.Null, exp.Boolean, exp.DataType, exp.DataTypeParam, exp.AggFunc, exp.Distinct,
    exp.Case, exp.If, exp.Coalesce,
)  # fmt: skip


def _row_bound(query: exp.Expr) -> int | None:
    """At most how many rows ``query`` returns, when its text proves it: a literal
    LIMIT, or a SELECT that makes one row (aggregates without GROUP BY, or no FROM)
    and calls nothing that could return a set. None: unknown."""
    bound = _limit(query)
    if isinstance(query, exp.Select) and not any(query.args.get(k) for k in ("group", "windows", "connect")):
        nodes = [n for projection in query.expressions for n in projection.walk()]
        no_source = not any(query.args.get(k) for k in ("from_", "joins", "laterals"))
        one_row = all(isinstance(n, _ONE_ROW_NODES) for n in nodes) and (
            no_source or any(isinstance(n, exp.AggFunc) for n in nodes)
        )
        if one_row and nodes:
            bound = 1 if bound is None else min(bound, 1)
    return bound


__all__ = ["CACHE", "AnalysisCache", "analyse_statement", "analyze_cell", "tokenize_cell"]
