"""The decision engine: ``(identity, analysis, connection) -> Decision``.

Precedence (documented in docs/policy.md):

1. No role of the policy matches the user, or the connection is unknown: deny.
2. Anything analysis could not resolve: deny (fail closed).
3. Every statement must be allowed by at least one of the user's roles; a deny
   from any role (``deny_tables``, ``deny`` conditions) wins over any allow.
4. Holds (``hold`` conditions, classified predicates or writes set to hold) make
   the cell wait for an approver, unless something already denies it.
5. Masks: for each classification the strongest operator among the user's roles
   applies (a role that does not mention it contributes ``defaults.mask``).

The cell is decided as a whole: one denied statement denies the cell.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from warden.masking.operators import MaskOperator, escalate_for_transform, strongest
from warden.policy.conditions import Deferred
from warden.policy.model import FunctionGrant, Policy, Role
from warden.sql.model import CellAnalysis, ColumnRef, StatementAnalysis, Unresolved

Action = Literal["allow", "mask", "hold", "deny"]
_RANK: dict[str, int] = {"allow": 0, "mask": 1, "hold": 2, "deny": 3}
_PREDICATE_RANK = {"allow": 0, "hold": 1, "deny": 2}
_WRITE_KINDS = frozenset({"insert", "update", "delete", "merge", "copy", "create", "alter", "drop", "truncate", "comment", "grant", "revoke"})


@dataclass(frozen=True)
class Identity:
    subject: str
    groups: frozenset[str] = frozenset()
    attributes: Mapping[str, str] = field(default_factory=dict)
    kind: str = "human"  # "human" | "service"
    display_name: str = ""


@dataclass(frozen=True)
class Reason:
    rule: str
    message: str
    action: Action
    statement: int | None = None  # index in the cell; None for the whole cell


@dataclass(frozen=True)
class ColumnMask:
    statement: int
    position: int
    column: str
    operator: MaskOperator
    classifications: tuple[str, ...]
    rules: tuple[str, ...]


@dataclass(frozen=True)
class RowFilter:
    statement: int
    relation: str  # schema.table
    predicate: str  # with user attributes bound as SQL literals
    rule: str


@dataclass(frozen=True)
class Taint:
    """A written column that now holds classified data."""

    column: ColumnRef
    classifications: frozenset[str]


@dataclass(frozen=True)
class PendingCheck:
    """A hold condition that needs a fact only the gateway can measure (``rows_estimate``)."""

    statement: int
    rule: str
    condition: str


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: tuple[Reason, ...]
    roles: tuple[str, ...] = ()
    masks: tuple[ColumnMask, ...] = ()
    row_filters: tuple[RowFilter, ...] = ()
    taints: tuple[Taint, ...] = ()
    pending: tuple[PendingCheck, ...] = ()
    redacted_sql: str = ""

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.rule for r in self.reasons))

    @property
    def summary(self) -> str:
        deciding = [r for r in self.reasons if r.action == self.action] or list(self.reasons)
        return "; ".join(f"[{r.rule}] {r.message}" for r in deciding)


class Classifier:
    """Classifications of base columns for one connection: the policy's globs plus taints."""

    def __init__(self, policy: Policy, connection: str, taints: Mapping[str, frozenset[str]] | None = None) -> None:
        self.policy = policy
        self.connection = connection
        self.taints = taints or {}
        self._cache: dict[ColumnRef, frozenset[str]] = {}

    def __call__(self, ref: ColumnRef) -> frozenset[str]:
        found = self._cache.get(ref)
        if found is None:
            name = f"{self.connection}.{ref.qualified}"
            found = self.policy.classify(name) | self.taints.get(name, frozenset())
            self._cache[ref] = found
        return found

    def of(self, refs: Iterable[ColumnRef]) -> frozenset[str]:
        out: set[str] = set()
        for ref in refs:
            out |= self(ref)
        return frozenset(out)


def matching_roles(policy: Policy, identity: Identity) -> tuple[Role, ...]:
    return tuple(r for r in policy.roles if r.matches(identity.subject, identity.groups))


def decide(
    policy: Policy,
    identity: Identity,
    analysis: CellAnalysis,
    connection: str,
    *,
    taints: Mapping[str, frozenset[str]] | None = None,
) -> Decision:
    """Decide a whole cell. Never raises for policy reasons: a deny is a Decision."""
    reasons: list[Reason] = []
    roles = matching_roles(policy, identity)
    classifier = Classifier(policy, connection, taints)
    redacted = redact_sql(analysis, classifier, policy.defaults.redact_literals)
    role_names = tuple(r.name for r in roles)

    if connection not in policy.connections:
        known = ", ".join(sorted(policy.connections))
        reasons.append(Reason("unknown-connection", f"connection {connection!r} is not defined in the policy (known: {known})", "deny"))
        return Decision("deny", tuple(reasons), role_names, redacted_sql=redacted)
    if not roles:
        groups = ", ".join(sorted(identity.groups)) or "none"
        reasons.append(Reason("default-deny", f"no role matches user {identity.subject!r} (groups: {groups}); ask an admin to add you to a role", "deny"))
        return Decision("deny", tuple(reasons), role_names, redacted_sql=redacted)
    roles = tuple(r for r in roles if r.serves(connection))
    role_names = tuple(r.name for r in roles)
    if not roles:
        reasons.append(Reason("default-deny", f"none of your roles may use connection {connection!r}", "deny"))
        return Decision("deny", tuple(reasons), role_names, redacted_sql=redacted)

    for problem in analysis.unresolved:
        reasons.append(Reason(f"fail-closed/{problem.code}", _where(problem.message, problem.line, problem.col) + _suggestion(problem, roles, connection), "deny"))

    masks: list[ColumnMask] = []
    filters: list[RowFilter] = []
    taint_out: list[Taint] = []
    pending: list[PendingCheck] = []
    count = len(analysis.statements)
    for st in analysis.statements:
        _statement(policy, identity, roles, st, connection, classifier, count, reasons, masks, filters, taint_out, pending)
    if not analysis.statements and not analysis.unresolved:
        reasons.append(Reason("fail-closed/empty", "the cell holds no SQL statement", "deny"))

    action: Action = "allow"
    for r in reasons:
        if _RANK[r.action] > _RANK[action]:
            action = r.action
    if action == "allow" and masks:
        action = "mask"
    if action == "allow" and not reasons:
        reasons.append(Reason("allow", f"allowed by role(s) {', '.join(role_names)}", "allow"))
    return Decision(
        action=action,
        reasons=tuple(reasons),
        roles=role_names,
        masks=tuple(masks),
        row_filters=tuple(filters),
        taints=tuple(taint_out),
        pending=tuple(pending),
        redacted_sql=redacted,
    )


def _suggestion(problem: Unresolved, roles: tuple[Role, ...], connection: str) -> str:
    """"; did you mean `x`?" for a misspelt name, among names the user may see: a
    name in a relation any of the user's roles denies, or outside their tables, is
    never suggested."""
    if not problem.name or not problem.candidates:
        return ""
    visible: list[str] = []
    for relation, name in problem.candidates:
        if relation and not _may_see(roles, f"{connection}.{relation}"):
            continue
        if name == problem.name:
            continue  # it exists somewhere, but not where the query looks for it
        visible.append(name)
    close = difflib.get_close_matches(problem.name, list(dict.fromkeys(visible)), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def _may_see(roles: tuple[Role, ...], full: str) -> bool:
    if any(fnmatch.fnmatchcase(full, p) for r in roles for p in r.deny_tables):
        return False
    if roles and all(r.tables is not None for r in roles):
        return any(fnmatch.fnmatchcase(full, p) for r in roles for p in (r.tables or ()))
    return True


def _where(message: str, line: int | None, col: int | None) -> str:
    return f"{message} (line {line}, column {col})" if line is not None else message


def _statement(
    policy: Policy,
    identity: Identity,
    roles: tuple[Role, ...],
    st: StatementAnalysis,
    connection: str,
    classify: Classifier,
    count: int,
    reasons: list[Reason],
    masks: list[ColumnMask],
    filters: list[RowFilter],
    taints: list[Taint],
    pending: list[PendingCheck],
) -> None:
    i = st.index
    label = f"statement {i + 1} ({st.kind})"
    for problem in st.unresolved:
        message = _where(problem.message, problem.line, problem.col) + _suggestion(problem, roles, connection)
        reasons.append(Reason(f"fail-closed/{problem.code}", f"{label}: {message}", "deny", i))

    allowing = [r for r in roles if st.kind in _expand(r.statements)]
    if not allowing:
        allowed = "; ".join(f"{r.name}: {', '.join(sorted(r.statements)) or 'nothing'}" for r in roles)
        reasons.append(Reason("statements", f"{label}: none of your roles allows {st.kind} statements ({allowed})", "deny", i))

    # Functions that are not reviewed built-ins: allowed only when the policy's
    # functions: section declares them, and then they read what it says.
    grants: dict[str, FunctionGrant] = {}
    for key in st.functions:
        grant = resolve_function(policy, connection, key, st.search_path)
        if grant is None:
            reasons.append(
                Reason(
                    "fail-closed/unknown-function",
                    f"{label}: {key}() is not a built-in function warden has reviewed (user-defined, an extension's, "
                    "or unknown), so what it returns cannot be traced; use a built-in, or ask an admin to declare it "
                    "under functions: with the columns it reads",
                    "deny",
                    i,
                )
            )
        else:
            grants[key] = grant
    function_reads = {key: _grant_columns(g, connection) for key, g in grants.items()}
    function_relations = tuple(dict.fromkeys(c.relation for cols in function_reads.values() for c in cols))

    relations = tuple(dict.fromkeys((*st.reads, *st.writes, *function_relations)))
    for rel in relations:
        full = f"{connection}.{rel}"
        for role in roles:
            for j, pattern in enumerate(role.deny_tables):
                if fnmatch.fnmatchcase(full, pattern):
                    reasons.append(Reason(f"role:{role.name}/deny_tables[{j}]", f"{label}: {full} matches {pattern!r}, which role {role.name} denies", "deny", i))
        if all(r.tables is not None for r in roles) and not any(
            fnmatch.fnmatchcase(full, p) for r in roles for p in (r.tables or ())
        ):
            reasons.append(Reason("tables", f"{label}: {full} is not in the tables any of your roles may use", "deny", i))

    # Masks per output column.
    for pos, out in enumerate(st.outputs):
        if out.functions:
            # A declared function's result carries the columns it reads.
            extra = {c for key in out.functions for c in function_reads.get(key, ())}
            out = replace(out, sources=out.sources | frozenset(extra), transformed=True)
        classes = classify.of(out.sources)
        if not classes:
            continue
        op, rules = _mask_for(policy, roles, classes)
        if out.transformed:
            op = escalate_for_transform(op)
        if op.kind != "clear":
            masks.append(ColumnMask(i, pos, out.name, op, tuple(sorted(classes)), rules))
            how = "transformed from" if out.transformed else "copy of"
            reasons.append(
                Reason(rules[0], f"{label}: column {out.name!r} ({how} {', '.join(sorted(classes))}) masked with {op.spec}", "mask", i)
            )

    # Classified columns used to filter, join, group or sort reveal values without showing them.
    revealing = {u.column for u in st.uses if u.usage.reveals_by_filtering}
    masked_revealing = sorted(
        str(c) for c in revealing if (cl := classify(c)) and _mask_for(policy, roles, cl)[0].kind != "clear"
    )
    if masked_revealing:
        action, rule = _strictest(roles, "classified_in_predicates", policy.defaults.classified_in_predicates)
        if action != "allow":
            reasons.append(Reason(rule, f"{label}: masked column(s) {', '.join(masked_revealing)} used in WHERE/JOIN/GROUP BY/ORDER BY", action, i))  # type: ignore[arg-type]

    # Writes that copy classified data: taint the target and hold or deny.
    written_classified = []
    for w in st.column_writes:
        classes = classify.of(w.sources)
        if classes:
            taints.append(Taint(w.column, classes))
            written_classified.append(f"{w.column} <- {', '.join(sorted(classes))}")
    if written_classified:
        action, rule = _strictest(roles, "classified_writes", policy.defaults.classified_writes)
        if action != "allow":
            reasons.append(Reason(rule, f"{label}: writes classified data ({'; '.join(written_classified)})", action, i))  # type: ignore[arg-type]

    # Conditions.
    facts = statement_facts(st, classify, count)
    for role in roles:
        for cond in role.deny:
            try:
                if cond.condition.evaluate(facts):
                    reasons.append(Reason(cond.rule_id, f"{label}: matches deny condition {cond.condition.source!r}", "deny", i))
            except Deferred:
                pending.append(PendingCheck(i, cond.rule_id, cond.condition.source))
        for cond in role.hold:
            try:
                if cond.condition.evaluate(facts):
                    reasons.append(Reason(cond.rule_id, f"{label}: matches hold condition {cond.condition.source!r}", "hold", i))
            except Deferred:
                pending.append(PendingCheck(i, cond.rule_id, cond.condition.source))

    # Row filters.
    for rel in relations:
        full = f"{connection}.{rel}"
        for role in roles:
            predicate = role.row_filters.get(full)
            if predicate is None:
                continue
            rule = f"role:{role.name}/row_filters/{full}"
            if st.kind == "merge" and rel in st.writes:
                # A MERGE target cannot be narrowed by a subquery: its rows outside the
                # filter would be matched and changed.
                reasons.append(Reason(rule, f"{label}: MERGE into {full}, which has a row filter for you, cannot be restricted to your rows; use UPDATE or DELETE with a WHERE", "deny", i))
                continue
            if rel in function_relations and rel not in st.reads:
                via = ", ".join(sorted(k for k, cols in function_reads.items() if any(c.relation == rel for c in cols)))
                reasons.append(
                    Reason(rule, f"{label}: {via}() reads {full}, which has a row filter for you; a function's body "
                           "cannot be filtered, so the call is denied", "deny", i)
                )
                continue
            try:
                bound = bind_user_attributes(predicate, identity)
            except KeyError as exc:
                reasons.append(Reason(rule, f"{label}: the row filter on {full} needs user attribute {exc.args[0]!r}, which your identity lacks", "deny", i))
                continue
            filters.append(RowFilter(i, rel, bound, rule))


def resolve_function(policy: Policy, connection: str, key: str, search_path: tuple[str, ...]) -> FunctionGrant | None:
    """The policy's declaration of the called function ``key`` (``schema.name`` or a
    bare ``name``, found along the statement's search path), or None."""
    if not policy.functions:
        return None
    candidates = [f"{connection}.{key}"] if "." in key else [f"{connection}.{schema}.{key}" for schema in search_path]
    for name in candidates:
        grant = policy.functions.get(name)
        if grant is None and policy.connections[connection].dialect == "duckdb":
            grant = next((g for n, g in policy.functions.items() if n.lower() == name.lower()), None)
        if grant is not None:
            return grant
    return None


def _grant_columns(grant: FunctionGrant, connection: str) -> tuple[ColumnRef, ...]:
    out = []
    for col in grant.reads:
        _conn, schema, table, column = col.split(".")
        out.append(ColumnRef(schema, table, column))
    return tuple(out)


def statement_facts(st: StatementAnalysis, classify: Classifier, count: int, **extra: Any) -> dict[str, Any]:
    """The facts hold/deny conditions see for one statement (``extra``: gateway facts)."""
    return {
        "kind": st.kind,
        "where": st.has_where,
        "limit": st.limit,
        "tables": tuple(dict.fromkeys((*st.reads, *st.writes))),
        "statements": count,
        "classified": bool(classify.of(c.column for c in st.uses)),
        "writes": st.kind in _WRITE_KINDS,
        **extra,
    }


def _expand(kinds: frozenset[str]) -> frozenset[str]:
    from warden.sql.kinds import expand_kinds

    return expand_kinds(tuple(kinds))


def _mask_for(policy: Policy, roles: tuple[Role, ...], classes: frozenset[str]) -> tuple[MaskOperator, tuple[str, ...]]:
    """The strongest operator the user's roles give for these classifications."""
    ops: list[MaskOperator] = []
    rules: list[str] = []
    for cls in sorted(classes):
        for role in roles:
            op = role.masks.get(cls)
            if op is None:
                ops.append(policy.defaults.mask)
                rules.append(f"defaults/mask ({cls})")
            else:
                ops.append(op)
                rules.append(f"role:{role.name}/masks/{cls}")
    chosen = strongest(ops)
    used = tuple(dict.fromkeys(r for r, o in zip(rules, ops, strict=True) if o == chosen))
    # strongest() may combine partial operators into a stronger one none of them named.
    return chosen, used or tuple(dict.fromkeys(rules))


def _strictest(roles: tuple[Role, ...], setting: str, default: str) -> tuple[str, str]:
    best, rule = "allow", f"defaults/{setting}"
    for role in roles:
        value = getattr(role, setting) or default
        source = f"role:{role.name}/{setting}" if getattr(role, setting) else f"defaults/{setting}"
        if _PREDICATE_RANK[value] >= _PREDICATE_RANK[best]:
            best, rule = value, source
    return best, rule


_ATTR = re.compile(r":user\.([A-Za-z_][A-Za-z0-9_]*)")


def bind_user_attributes(predicate: str, identity: Identity) -> str:
    """Replace ``:user.NAME`` with a SQL string literal of the identity's attribute."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "subject":
            value = identity.subject
        elif name in identity.attributes:
            value = str(identity.attributes[name])
        else:
            raise KeyError(name)
        return "'" + value.replace("'", "''") + "'"

    return _ATTR.sub(sub, predicate)


def redact_sql(analysis: CellAnalysis, classify: Classifier, mode: str = "classified") -> str:
    """The cell's SQL with literals bound to classified columns replaced by ``'***'``."""
    if any(p.code == "parse-error" for p in analysis.unresolved):
        mode = "all"  # what a broken statement compares with is unknown: hide every literal
    spans: list[tuple[int, int]] = []
    for st in analysis.statements:
        for lit in st.literals:
            if mode == "all" or classify.of(lit.columns):
                spans.append((lit.start, lit.end))
    if mode == "all":
        spans = _all_literal_spans(analysis)
    if not spans:
        return analysis.sql
    out = []
    pos = 0
    for start, end in sorted(set(spans)):
        if start < pos:
            continue
        out.append(analysis.sql[pos:start])
        out.append("'***'")
        pos = end
    out.append(analysis.sql[pos:])
    return "".join(out)


def _all_literal_spans(analysis: CellAnalysis) -> list[tuple[int, int]]:
    from warden.sql.analyze import LITERAL_TOKENS, tokenize_cell

    try:
        toks = tokenize_cell(analysis.sql, analysis.dialect)
    except Exception:
        return [(0, len(analysis.sql))]
    return [(t.start, t.end + 1) for t in toks.tokens if t.token_type in LITERAL_TOKENS]

