"""The policy file: model, loading and validation with line-numbered errors.

See docs/policy.md for the format. Every setting is listed in ``SETTINGS`` (a
test checks each is documented there).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warden.errors import PolicyError
from warden.masking.operators import MaskOperator, parse_operator
from warden.policy.conditions import Condition, ConditionError, parse_condition
from warden.sql.catalog import SUPPORTED_DIALECTS
from warden.sql.kinds import KIND_GROUPS, KINDS

PREDICATE_ACTIONS = ("deny", "hold", "allow")

# Every key the policy understands, by section: the docs test checks each one.
SETTINGS: dict[str, tuple[str, ...]] = {
    "top": (
        "version", "connections", "defaults", "classifications", "functions", "roles", "approvers",
        "auditors", "admins",
    ),
    "function": ("reads", "description"),
    "connection": ("dialect", "dsn_env", "dsn_file", "path", "search_path", "read_only"),
    "defaults": ("mask", "classified_in_predicates", "classified_writes", "redact_literals"),
    "role": (
        "description", "members", "connections", "statements", "tables", "deny_tables",
        "masks", "row_filters", "classified_in_predicates", "classified_writes", "hold", "deny",
        "limits",
    ),
    "limits": ("statement_timeout_ms", "max_rows", "max_bytes"),
    "members": ("groups", "users"),
    "approvers": ("groups", "users", "roles", "kinds"),
    "auditors": ("groups", "users", "roles", "kinds"),
    "admins": ("groups", "users", "roles", "kinds"),
}  # fmt: skip


@dataclass(frozen=True)
class Connection:
    name: str
    dialect: str
    dsn_env: str | None = None
    dsn_file: str | None = None
    path: str | None = None
    search_path: tuple[str, ...] = ()
    read_only: bool = False


@dataclass(frozen=True)
class RuleCondition:
    rule_id: str
    condition: Condition


@dataclass(frozen=True)
class RoleLimits:
    """Per-role execution limits; ``None`` means the gateway's default."""

    statement_timeout_ms: int | None = None
    max_rows: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class Role:
    name: str
    description: str = ""
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    connections: tuple[str, ...] = ("*",)
    statements: frozenset[str] = frozenset()
    tables: tuple[str, ...] | None = None  # allow-list of connection.schema.table globs
    deny_tables: tuple[str, ...] = ()
    masks: Mapping[str, MaskOperator] = field(default_factory=dict)
    row_filters: Mapping[str, str] = field(default_factory=dict)
    classified_in_predicates: str | None = None
    classified_writes: str | None = None
    hold: tuple[RuleCondition, ...] = ()
    deny: tuple[RuleCondition, ...] = ()
    limits: RoleLimits = field(default_factory=RoleLimits)

    def matches(self, subject: str, groups: frozenset[str]) -> bool:
        return subject in self.users or bool(self.groups & groups)

    def serves(self, connection: str) -> bool:
        return any(fnmatch.fnmatchcase(connection, p) for p in self.connections)


@dataclass(frozen=True)
class Defaults:
    mask: MaskOperator = field(default_factory=lambda: parse_operator("redact"))
    classified_in_predicates: str = "hold"
    classified_writes: str = "hold"
    redact_literals: str = "classified"  # "classified" | "all"


IDENTITY_KINDS = ("human", "service")


@dataclass(frozen=True)
class Principals:
    """Who holds a gateway power (approving, reading the audit log, administering):
    members by user, group or policy role, limited to identity ``kinds``."""

    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset({"human"})

    def admits(self, subject: str, groups: frozenset[str], roles: frozenset[str], kind: str) -> bool:
        if kind not in self.kinds:
            return False
        return subject in self.users or bool(groups & self.groups) or bool(roles & self.roles)

    def to_json(self) -> dict[str, list[str]]:
        return {"groups": sorted(self.groups), "users": sorted(self.users), "roles": sorted(self.roles), "kinds": sorted(self.kinds)}


#: Approvers: by default humans only (a service account's approval cannot be tied
#: to the person holding its credentials).
Approvers = Principals


@dataclass(frozen=True)
class FunctionGrant:
    """A function outside the engine's reviewed built-ins that an admin allows,
    with every base column its body reads (``connection.schema.table.column``)."""

    name: str  # connection.schema.function
    reads: tuple[str, ...] = ()
    description: str = ""

    @property
    def connection(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class Policy:
    source: str
    connections: Mapping[str, Connection]
    classifications: Mapping[str, tuple[str, ...]]  # classification -> column globs
    roles: tuple[Role, ...]
    defaults: Defaults = field(default_factory=Defaults)
    approvers: Principals = field(default_factory=Principals)
    #: who may read and verify the audit log (/v1/audit, %%sql audit)
    auditors: Principals = field(default_factory=lambda: Principals(roles=frozenset({"auditor"}), kinds=frozenset(IDENTITY_KINDS)))
    #: who may act on other users' queries (cancel)
    admins: Principals = field(default_factory=Principals)
    functions: Mapping[str, FunctionGrant] = field(default_factory=dict)  # by connection.schema.name
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(
            (name, re.compile(fnmatch.translate(pattern)))
            for name, patterns in self.classifications.items()
            for pattern in patterns
        )
        object.__setattr__(self, "_compiled", compiled)

    def classify(self, qualified_column: str) -> frozenset[str]:
        """Classifications of ``connection.schema.table.column``."""
        return frozenset(name for name, rx in self._compiled if rx.match(qualified_column))


# -- loading ---------------------------------------------------------------------------


class _Located:
    """Line numbers of every key path in the YAML document."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[tuple[str | int, ...], int] = {}

    def error(self, path: tuple[str | int, ...], message: str) -> PolicyError:
        line = None
        probe = path
        while probe and line is None:
            line = self.lines.get(probe)
            probe = probe[:-1]
        shown = ".".join(str(p) for p in path) or "(top)"
        return PolicyError(f"{shown}: {message}", file=self.file, line=line)


def _to_python(node: yaml.Node, path: tuple[str | int, ...], loc: _Located) -> Any:
    loc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            key = str(key)
            if key in out:
                raise PolicyError(f"duplicate key {key!r}", file=loc.file, line=key_node.start_mark.line + 1)
            loc.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, (*path, key), loc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), loc) for i, item in enumerate(node.value)]
    # Scalars: let PyYAML resolve types (ints, bools, null) exactly as safe_load does.
    return yaml.safe_load(yaml.serialize(node))


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror}", file=str(p)) from exc
    return parse_policy(text, source=str(p))


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    loc = _Located(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(f"not valid YAML: {exc.problem or exc}", file=source, line=line) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", file=source) from None
    if node is None:
        raise PolicyError("the policy is empty; it needs at least 'connections' and 'roles'", file=source, line=1)
    data = _to_python(node, (), loc)
    return _build(data, loc)


def _mapping(value: Any, path: tuple[str | int, ...], loc: _Located, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise loc.error(path, f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _strings(value: Any, path: tuple[str | int, ...], loc: _Located, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise loc.error(path, f"{what} must be a list of strings")
    return list(value)


def _known_keys(data: Mapping[str, Any], section: str, path: tuple[str | int, ...], loc: _Located) -> None:
    allowed = SETTINGS[section]
    for key in data:
        if key not in allowed:
            raise loc.error((*path, key), f"unknown setting {key!r}; expected one of: {', '.join(allowed)}")


def _action(value: Any, path: tuple[str | int, ...], loc: _Located) -> str | None:
    if value is None:
        return None
    if value not in PREDICATE_ACTIONS:
        raise loc.error(path, f"must be one of {', '.join(PREDICATE_ACTIONS)}, got {value!r}")
    return str(value)


def _operator(value: Any, path: tuple[str | int, ...], loc: _Located) -> MaskOperator:
    try:
        return parse_operator(str(value))
    except ValueError as exc:
        raise loc.error(path, str(exc)) from None


def _build(data: Any, loc: _Located) -> Policy:
    top = _mapping(data, (), loc, "the policy")
    _known_keys(top, "top", (), loc)
    version = top.get("version", 1)
    if version != 1:
        raise loc.error(("version",), f"unsupported policy version {version!r}; this warden reads version 1")

    connections: dict[str, Connection] = {}
    for name, spec in _mapping(top.get("connections"), ("connections",), loc, "connections").items():
        path: tuple[str | int, ...] = ("connections", name)
        spec = _mapping(spec, path, loc, f"connection {name!r}")
        _known_keys(spec, "connection", path, loc)
        dialect = spec.get("dialect")
        if dialect not in SUPPORTED_DIALECTS:
            raise loc.error((*path, "dialect"), f"dialect must be one of {', '.join(SUPPORTED_DIALECTS)}")
        if dialect == "postgres" and not (spec.get("dsn_env") or spec.get("dsn_file")):
            raise loc.error(path, "a postgres connection needs dsn_env or dsn_file (credentials never go in the policy)")
        if dialect == "duckdb" and not spec.get("path"):
            raise loc.error(path, "a duckdb connection needs 'path' (the database file)")
        connections[name] = Connection(
            name=name,
            dialect=str(dialect),
            dsn_env=spec.get("dsn_env"),
            dsn_file=spec.get("dsn_file"),
            path=spec.get("path"),
            search_path=tuple(_strings(spec.get("search_path"), (*path, "search_path"), loc, "search_path")),
            read_only=bool(spec.get("read_only", False)),
        )
    if not connections:
        raise loc.error(("connections",), "at least one connection is required")

    classifications: dict[str, tuple[str, ...]] = {}
    for name, patterns in _mapping(top.get("classifications"), ("classifications",), loc, "classifications").items():
        path = ("classifications", name)
        globs = _strings(patterns, path, loc, f"classification {name!r}")
        for i, g in enumerate(globs):
            if g.count(".") != 3:
                raise loc.error((*path, i), f"{g!r} must be connection.schema.table.column (globs allowed)")
        classifications[name] = tuple(globs)

    d = _mapping(top.get("defaults"), ("defaults",), loc, "defaults")
    _known_keys(d, "defaults", ("defaults",), loc)
    redact_literals = d.get("redact_literals", "classified")
    if redact_literals not in ("classified", "all"):
        raise loc.error(("defaults", "redact_literals"), "must be 'classified' or 'all'")
    functions: dict[str, FunctionGrant] = {}
    for fname, spec in _mapping(top.get("functions"), ("functions",), loc, "functions").items():
        path = ("functions", fname)
        if fname.count(".") != 2 or fname.split(".", 1)[0] not in connections:
            raise loc.error(path, f"{fname!r} must be connection.schema.function, with a connection defined above")
        spec = _mapping(spec, path, loc, f"function {fname!r}")
        _known_keys(spec, "function", path, loc)
        reads = _strings(spec.get("reads"), (*path, "reads"), loc, "reads")
        for i, col in enumerate(reads):
            if col.count(".") != 3 or any(ch in col for ch in "*?["):
                raise loc.error((*path, "reads", i), f"{col!r} must be connection.schema.table.column (no globs: name each column the function reads)")
            if col.split(".", 1)[0] != fname.split(".", 1)[0]:
                raise loc.error((*path, "reads", i), f"{col!r} is on another connection than the function")
        functions[fname] = FunctionGrant(fname, tuple(reads), str(spec.get("description", "")))

    defaults = Defaults(
        mask=_operator(d["mask"], ("defaults", "mask"), loc) if "mask" in d else Defaults().mask,
        classified_in_predicates=_action(d.get("classified_in_predicates"), ("defaults", "classified_in_predicates"), loc) or "hold",
        classified_writes=_action(d.get("classified_writes"), ("defaults", "classified_writes"), loc) or "hold",
        redact_literals=str(redact_literals),
    )

    roles: list[Role] = []
    known_kinds = set(KINDS) | set(KIND_GROUPS)
    for name, spec in _mapping(top.get("roles"), ("roles",), loc, "roles").items():
        path = ("roles", name)
        spec = _mapping(spec, path, loc, f"role {name!r}")
        _known_keys(spec, "role", path, loc)
        members = _mapping(spec.get("members"), (*path, "members"), loc, "members")
        _known_keys(members, "members", (*path, "members"), loc)
        statements = _strings(spec.get("statements"), (*path, "statements"), loc, "statements")
        for i, k in enumerate(statements):
            if k not in known_kinds:
                raise loc.error((*path, "statements", i), f"unknown statement kind {k!r}; known: {', '.join([*KINDS, *KIND_GROUPS])}")
        masks: dict[str, MaskOperator] = {}
        for cls, op in _mapping(spec.get("masks"), (*path, "masks"), loc, "masks").items():
            if cls not in classifications:
                raise loc.error((*path, "masks", cls), f"unknown classification {cls!r}; define it under 'classifications'")
            masks[cls] = _operator(op, (*path, "masks", cls), loc)
        row_filters: dict[str, str] = {}
        for table, predicate in _mapping(spec.get("row_filters"), (*path, "row_filters"), loc, "row_filters").items():
            if not isinstance(predicate, str) or table.count(".") != 2:
                raise loc.error((*path, "row_filters", table), "row filters map connection.schema.table to a SQL predicate string")
            row_filters[table] = predicate
        tables_value = spec.get("tables")
        roles.append(
            Role(
                name=name,
                description=str(spec.get("description", "")),
                groups=frozenset(_strings(members.get("groups"), (*path, "members", "groups"), loc, "groups")),
                users=frozenset(_strings(members.get("users"), (*path, "members", "users"), loc, "users")),
                connections=tuple(_strings(spec.get("connections"), (*path, "connections"), loc, "connections") or ["*"]),
                statements=frozenset(statements),
                tables=tuple(_strings(tables_value, (*path, "tables"), loc, "tables")) if tables_value is not None else None,
                deny_tables=tuple(_strings(spec.get("deny_tables"), (*path, "deny_tables"), loc, "deny_tables")),
                masks=masks,
                row_filters=row_filters,
                classified_in_predicates=_action(spec.get("classified_in_predicates"), (*path, "classified_in_predicates"), loc),
                classified_writes=_action(spec.get("classified_writes"), (*path, "classified_writes"), loc),
                hold=_conditions(spec.get("hold"), (*path, "hold"), loc, f"role:{name}/hold"),
                deny=_conditions(spec.get("deny"), (*path, "deny"), loc, f"role:{name}/deny"),
                limits=_limits(spec.get("limits"), (*path, "limits"), loc),
            )
        )
    if not roles:
        raise loc.error(("roles",), "at least one role is required (no role means every query is denied)")

    role_names = {r.name for r in roles}
    approvers = _principals(top, "approvers", loc, role_names, kinds=("human",))
    # Without an auditors section the audit log is read by the policy role named
    # "auditor" (what earlier versions hard-wired), human or service (exporters).
    auditors = _principals(top, "auditors", loc, role_names, kinds=IDENTITY_KINDS, roles=("auditor",))
    admins = _principals(top, "admins", loc, role_names, kinds=("human",))
    return Policy(
        source=loc.file,
        connections=connections,
        classifications=classifications,
        roles=tuple(roles),
        defaults=defaults,
        approvers=approvers,
        auditors=auditors,
        admins=admins,
        functions=functions,
    )


def _principals(
    top: Mapping[str, Any], name: str, loc: _Located, role_names: set[str], *, kinds: tuple[str, ...], roles: tuple[str, ...] = ()
) -> Principals:
    if name not in top:
        return Principals(roles=frozenset(roles), kinds=frozenset(kinds))
    spec = _mapping(top.get(name), (name,), loc, name)
    _known_keys(spec, name, (name,), loc)
    named_roles = _strings(spec.get("roles"), (name, "roles"), loc, "roles")
    for i, r in enumerate(named_roles):
        if r not in role_names:
            raise loc.error((name, "roles", i), f"unknown role {r!r}; define it under 'roles'")
    chosen = _strings(spec.get("kinds"), (name, "kinds"), loc, "kinds") if "kinds" in spec else list(kinds)
    for i, k in enumerate(chosen):
        if k not in IDENTITY_KINDS:
            raise loc.error((name, "kinds", i), f"unknown identity kind {k!r}; one of: {', '.join(IDENTITY_KINDS)}")
    return Principals(
        groups=frozenset(_strings(spec.get("groups"), (name, "groups"), loc, "groups")),
        users=frozenset(_strings(spec.get("users"), (name, "users"), loc, "users")),
        roles=frozenset(named_roles),
        kinds=frozenset(chosen),
    )


def _limits(value: Any, path: tuple[str | int, ...], loc: _Located) -> RoleLimits:
    spec = _mapping(value, path, loc, "limits")
    _known_keys(spec, "limits", path, loc)
    out: dict[str, int] = {}
    for key, v in spec.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise loc.error((*path, key), f"{key} must be a non-negative integer (0 means no limit)")
        out[key] = v
    return RoleLimits(**out)


def _conditions(value: Any, path: tuple[str | int, ...], loc: _Located, rule_prefix: str) -> tuple[RuleCondition, ...]:
    out = []
    for i, text in enumerate(_strings(value, path, loc, "conditions")):
        try:
            out.append(RuleCondition(f"{rule_prefix}[{i}]", parse_condition(text)))
        except ConditionError as exc:
            raise loc.error((*path, i), str(exc)) from None
    return tuple(out)
