"""The audit record (DESIGN.md §6): schema, validation, canonical form and hash chain.

A caller (the gateway, or the kernel for cell events) builds an :class:`EventDraft`;
the store completes it into an :class:`AuditEvent` by assigning ``chain_id``, the next
gap-free ``seq``, ``prev_hash`` (the previous record's ``record_hash``, or the chain's
genesis value) and ``record_hash``::

    record_hash = sha256(prev_hash || canonical(record without record_hash))

``canonical`` is UTF-8 JSON with sorted keys, no whitespace, every field present
(``null`` when unset), lists for tuples and ``event_time`` as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``. Drafts are validated and normalised when they are
built, in the caller's thread, so a malformed event fails its own caller and can never
poison a group-commit batch.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from itertools import chain
from json.encoder import encode_basestring as _enc_str
from operator import attrgetter
from typing import Any, Final, cast

from warden import __version__

#: A JSON value (dict / list / str / int / float / bool / None).
Json = Any

EVENT_TYPES: Final = frozenset(
    {
        "session.start",
        "session.end",
        "cell.execute",
        "query.submitted",
        "query.allowed",
        "query.masked",
        "query.held",
        "query.denied",
        "query.executed",
        "query.failed",
        "query.cancel",
        "approval.requested",
        "approval.granted",
        "approval.rejected",
        "approval.expired",
        "auth.failure",
        "session.refused",
        "events.throttled",
        "policy.loaded",
        "audit.read",
        "audit.verify",
    }
)
SUBJECT_KINDS: Final = frozenset({"human", "service"})
MODES: Final = frozenset({"local", "shared"})
ACTIONS: Final = frozenset({"allow", "mask", "hold", "deny"})
STATUSES: Final = frozenset({"success", "failure", "pending"})

_CHOICES: Final[dict[str, frozenset[str]]] = {
    "subject_kind": SUBJECT_KINDS,
    "mode": MODES,
    "action": ACTIONS,
    "status": STATUSES,
}
_INT64_MAX: Final = 2**63 - 1
_GENESIS_PREFIX: Final = b"warden-audit-genesis:"


def genesis_hash(chain_id: str) -> str:
    """The ``prev_hash`` of a chain's first record: fixed, and different per chain."""
    return hashlib.sha256(_GENESIS_PREFIX + chain_id.encode("utf-8")).hexdigest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Every record of a batch shares the writer's "now": remember the last spelling.
# (A tuple swapped in one assignment, so threads never see a mismatched pair.)
_last_time: tuple[dt.datetime | None, str] = (None, "")


def format_time(t: dt.datetime) -> str:
    """ISO-8601 with microseconds and ``Z``: the one spelling used in hashes and exports."""
    global _last_time
    cached = _last_time
    if cached[0] is t:
        return cached[1]
    text = t.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):  # already UTC: the common case, and the cheap one
        text = text[:-6] + "Z"
    else:
        text = t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    _last_time = (t, text)
    return text


def parse_time(value: dt.datetime | str) -> dt.datetime:
    """A timezone-aware UTC datetime from a datetime or an ISO-8601 string."""
    t = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone; audit times are UTC")
    return t.astimezone(dt.UTC)


_ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# The C encoder behind _ENCODER, built once: JSONEncoder.encode() builds a new one per
# call, which is half the cost of encoding a small value. markers=None skips the
# cycle check (a cyclic value fails with RecursionError, reported as not JSON).
_c_encode: Final[Any] = (
    json.encoder.c_make_encoder(None, _ENCODER.default, _enc_str, None, ":", ",", True, False, False)  # type: ignore[attr-defined]
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


# Parses the canonical text we produced ourselves (no leading/trailing whitespace), so
# the scanner is called directly, skipping json.loads' two whitespace regex passes.
_scan_json: Final[Any] = cast(Any, json.JSONDecoder()).scan_once


def canonical_json(value: Json) -> str:
    """Sorted-key, compact JSON text; raises ValueError for NaN/inf and non-JSON values."""
    if _c_encode is None:  # pragma: no cover - CPython always has the C encoder
        return _ENCODER.encode(value)
    if value.__class__ is str:
        return str(_enc_str(value))
    try:
        return "".join(_c_encode(value, 0))
    except RecursionError:
        raise ValueError("value is too deeply nested or cyclic") from None


def _clean_text(s: str) -> str:
    # The stores cannot hold NUL (PostgreSQL text) or lone surrogates (UTF-8); replacing
    # them before hashing keeps the record storable and its hash stable.
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s


def normalise_json(value: Json, name: str = "value") -> Json:
    """A deep copy of ``value`` exactly as it will read back from storage.

    Round-tripping through canonical JSON turns tuples into lists and non-string keys
    into strings now, so the hash computed at append time equals the one recomputed
    from the stored text later.
    """
    if value is None:
        return None
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not JSON-serialisable: {exc}") from None
    return json.loads(_clean_text(text))


def _check_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
    return _clean_text(value)


def _check_list(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of strings, not {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, found {type(item).__name__}")
        out.append(_clean_text(item))
    return tuple(out)


def _check_int(name: str, value: object, *, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer or None, not {type(value).__name__}")
    if not minimum <= value <= _INT64_MAX:
        raise ValueError(f"{name}={value} is out of range [{minimum}, 2**63-1]")
    return value


def _check_float(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, not {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name}={value} must be a finite number >= 0")
    return f


def _needs_cleaning(text: str) -> bool:
    return "\x00" in text or not text.isascii()


def _json_field_text(name: str, value: Json) -> str:
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not JSON-serialisable: {exc}") from None
    return _clean_text(text)


def _new_event_id() -> str:
    # uuid4 formatted by hand: str(uuid.uuid4()) costs twice as much on the hot path.
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, kw_only=True)
class _Content:
    """The record's fields that a draft and a sealed record share: declared once, here.

    This class is the one table of the record: :data:`FIELD_KINDS` (storage order and
    each field's kind: validation, SQL and Arrow types, parsing rows back) is derived
    from the annotations of :class:`AuditEvent`, which is this plus :class:`_Chain`.
    """

    type: str
    # who
    subject: str | None = None
    display_name: str | None = None
    subject_kind: str | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    auth_method: str | None = None
    client_ip: str | None = None
    # where from
    session_id: str | None = None
    kernel_id: str | None = None
    notebook_path: str | None = None
    cell_id: str | None = None
    execution_count: int | None = None
    gateway_id: str | None = None
    warden_version: str | None = __version__
    mode: str | None = None
    # what
    connection: str | None = None
    dialect: str | None = None
    statement_kinds: tuple[str, ...] = ()
    sql: str | None = None
    fingerprint: str | None = None
    statement_hash: str | None = None
    params: Json = None
    objects: Json = None
    objects_modified: tuple[str, ...] = ()
    lineage: Json = None
    # decision
    action: str | None = None
    rule_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    masks: Json = None
    row_filters: Json = None
    approval_id: str | None = None
    approver: str | None = None
    # outcome
    status: str | None = None
    error: str | None = None
    rows: int | None = None
    bytes: int | None = None
    duration_ms: float | None = None
    result_fingerprint: str | None = None
    capture_ref: str | None = None
    # links between events
    correlation_id: str | None = None
    parent_event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Chain:
    """Identity and order of a sealed record (first in storage order): the store fills
    ``chain_id``, ``seq`` and the hashes; ``event_id`` and ``event_time`` come from the
    draft, where they are optional (a fresh id; the sealing time)."""

    event_id: str
    chain_id: str
    seq: int
    event_time: dt.datetime
    prev_hash: str
    record_hash: str


@dataclass(frozen=True, kw_only=True)
class _DraftHead:
    event_id: str = field(default_factory=_new_event_id)
    event_time: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class EventDraft(_Content, _DraftHead):
    """What a caller knows about an event; the store adds chain_id, seq and hashes.

    Validated and normalised on construction (raises TypeError/ValueError): ``type``
    must be one of :data:`EVENT_TYPES`; ``subject_kind``, ``mode``, ``action`` and
    ``status`` one of their documented values; list fields become tuples of str; JSON
    fields are deep-copied through canonical JSON. ``event_time`` defaults to the time
    the store seals the record (so it never goes backwards along a chain).
    ``sql`` and ``params`` must already be redacted by the caller.
    """

    def __post_init__(self) -> None:
        # Hot path (every query writes several events): validate with a few C-level
        # passes over all fields, and take the slow per-field route only when needed.
        put = object.__setattr__
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {self.type!r} (known: {', '.join(sorted(EVENT_TYPES))})")
        if self.event_id.__class__ is not str or not self.event_id:
            raise ValueError("event_id must be a non-empty string")
        if self.event_time is not None:
            if not isinstance(self.event_time, dt.datetime):
                raise TypeError("event_time must be a datetime")
            put(self, "event_time", parse_time(self.event_time))
        strs = _get_strs(self)
        if not set(map(type, strs)) <= _STR_OR_NONE or _needs_cleaning("".join(filter(None, strs))):
            for name, value in zip(_STR_FIELDS, strs, strict=True):
                put(self, name, _check_str(name, value))
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(sorted(allowed))} or None, not {value!r}")
        lists = _get_lists(self)
        if set(map(type, lists)) != {tuple} or not set(map(type, chain.from_iterable(lists))) <= {str} or _needs_cleaning(
            "".join(chain.from_iterable(lists))
        ):
            for name, value in zip(_LIST_FIELDS, lists, strict=True):
                put(self, name, _check_list(name, value))
        texts: dict[str, str] = {}
        for name in _JSON_FIELDS:
            value = getattr(self, name)
            if value is not None:
                copy = _scan_json(_json_field_text(name, value), 0)[0]  # a deep copy: later mutation by the caller cannot reach the record
                # Encode the copy, not the original: non-string keys sort differently
                # before and after they become strings, and verify re-encodes the copy.
                texts[name] = canonical_json(copy)
                put(self, name, copy)
        self.__dict__["_json_texts"] = texts
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                put(self, name, _check_int(name, value))
        if self.duration_ms is not None:
            put(self, "duration_ms", _check_float("duration_ms", self.duration_ms))


def _install_fast_init(cls: type) -> None:
    """Replace the dataclass ``__init__`` of a frozen dataclass with one that fills
    ``__dict__`` in one step. The generated frozen ``__init__`` pays an
    ``object.__setattr__`` per field (44 here): a fifth of the cost of building a
    draft. Same signature, defaults and ``__post_init__`` call; mypy still checks
    callers against the dataclass definition."""
    params = []
    items = []
    namespace: dict[str, Any] = {"_new_event_id": _new_event_id}
    for f in fields(cls):
        if f.default is not MISSING:
            namespace[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
            items.append(f"{f.name!r}: {f.name}")
        elif f.default_factory is not MISSING:
            namespace[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            items.append(f"{f.name!r}: _f_{f.name}() if {f.name} is _MISSING else {f.name}")
        else:
            params.append(f.name)
            items.append(f"{f.name!r}: {f.name}")
    namespace["_MISSING"] = MISSING
    source = (
        f"def __init__(self, *, {', '.join(params)}):\n"
        f"    self.__dict__.update({{{', '.join(items)}}})\n"
        + ("    self.__post_init__()\n" if hasattr(cls, "__post_init__") else "")
    )
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = vars(cls)["__init__"].__doc__
    cls.__init__ = init  # type: ignore[misc]


_install_fast_init(EventDraft)


@dataclass(frozen=True, kw_only=True)
class AuditEvent(_Content, _Chain):
    """One sealed audit record (one row of the store). Field meanings: docs/audit.md."""

    # ------------------------------------------------------------------ hashing

    def canonical(self) -> builtins.bytes:
        """Canonical bytes of the record without ``record_hash`` (what the hash covers)."""
        return canonical_bytes(self)

    def compute_hash(self, prev_hash: str | None = None) -> str:
        """The record hash recomputed from the content (``prev_hash`` defaults to the stored one)."""
        return chain_hash(self.prev_hash if prev_hash is None else prev_hash, canonical_bytes(self))

    # ------------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value (``event_time`` as ISO text, lists as lists)."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if name == "event_time":
                value = format_time(value)
            elif value.__class__ is tuple:
                value = list(value)
            out[name] = value
        return out

    def to_json(self) -> str:
        """One canonical JSON line including ``record_hash`` (the JSONL export format)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], *, json_as_text: bool = True) -> AuditEvent:
        """Parse a stored row, an Arrow row or (``json_as_text=False``) a JSONL object.

        Stores and Parquet keep JSON fields as canonical text; :meth:`to_dict` and JSONL
        carry them as values (a JSON field may itself hold a string, so the two cannot
        be told apart by looking). Nothing is validated beyond types: verify must be
        able to read tampered rows.
        """
        values: dict[str, Any] = {}
        for name, kind in FIELD_KINDS.items():
            value = row.get(name)
            if kind == "list":
                value = tuple(value) if value is not None else ()
            elif kind == "json":
                if json_as_text and value is not None:
                    value = json.loads(value)
            elif kind == "time":
                if value is None:
                    raise ValueError("record has no event_time")
                value = parse_time(value)
            elif kind == "int" and value is not None:
                value = int(value)
            elif kind == "float" and value is not None:
                value = float(value)
            values[name] = value
        return cls(**values)


# Rows read back (verify, export, queries) build sealed records: the same one-step fill.
_install_fast_init(AuditEvent)

#: Annotation -> kind. The kind drives validation, the SQL and Arrow column types and
#: parsing rows back: str, int, float, time, list (of str), json.
_KIND_OF_TYPE: Final[dict[str, str]] = {
    "str": "str", "str | None": "str", "int": "int", "int | None": "int", "float | None": "float",
    "dt.datetime": "time", "tuple[str, ...]": "list", "Json": "json",
}  # fmt: skip


def _field_kinds() -> dict[str, str]:
    out = {}
    for f in fields(AuditEvent):
        kind = _KIND_OF_TYPE.get(str(f.type))
        if kind is None:  # a new field with a type the stores cannot hold: fail at import
            raise TypeError(f"audit record field {f.name}: no storage kind for type {f.type!r}")
        out[f.name] = kind
    return out


#: Every field in storage order with its kind, generated from the one declaration above.
FIELD_KINDS: Final[dict[str, str]] = _field_kinds()
FIELDS: Final[tuple[str, ...]] = tuple(FIELD_KINDS)
#: Fields the store fills in; a draft has all the others.
CHAIN_FIELDS: Final = ("chain_id", "seq", "prev_hash", "record_hash")
DRAFT_FIELDS: Final[tuple[str, ...]] = tuple(f for f in FIELDS if f not in CHAIN_FIELDS)
_HASHED_FIELDS: Final[tuple[str, ...]] = tuple(f for f in FIELDS if f != "record_hash")
_STR_FIELDS: Final = tuple(f for f in DRAFT_FIELDS if FIELD_KINDS[f] == "str")
_LIST_FIELDS: Final = tuple(f for f in DRAFT_FIELDS if FIELD_KINDS[f] == "list")
_JSON_FIELDS: Final = tuple(f for f in DRAFT_FIELDS if FIELD_KINDS[f] == "json")
_INT_FIELDS: Final = tuple(f for f in DRAFT_FIELDS if FIELD_KINDS[f] == "int")

_get_strs = attrgetter(*_STR_FIELDS)
_get_lists = attrgetter(*_LIST_FIELDS)
_STR_OR_NONE: Final = frozenset({str, type(None)})
# The canonical form is assembled field by field in sorted-key order rather than with
# json.dumps over a dict: byte-identical (a test checks), about twice as fast, and the
# JSON fields' canonical text computed once at draft time is reused verbatim.
_CANON_NAMES: Final = tuple(sorted(_HASHED_FIELDS))
_CANON_PLAN: Final = tuple((name, FIELD_KINDS[name], json.dumps(name) + ":") for name in _CANON_NAMES)
_get_canon = attrgetter(*_CANON_NAMES)


def json_texts(record: AuditEvent | EventDraft) -> dict[str, str]:
    """Canonical JSON text of each non-null JSON field (cached from draft validation)."""
    cached: dict[str, str] | None = record.__dict__.get("_json_texts")
    if cached is None:
        cached = {}
        for name in _JSON_FIELDS:
            value = getattr(record, name)
            if value is not None:
                cached[name] = canonical_json(value)
        record.__dict__["_json_texts"] = cached
    return cached


def _compile_canonical() -> Any:
    # The canonical form is fixed (same keys, same order, a known kind per key), so it
    # is compiled once into one f-string with an expression per field: no loop, no
    # dispatch, no intermediate strings. This is the hot path of every append and of
    # verify; tests check it against json.dumps.
    parts = []
    for name in _CANON_NAMES:
        kind = FIELD_KINDS[name]
        v = f'd["{name}"]'
        if kind == "str":
            expr = f'"null" if {v} is None else _enc_str({v})'
        elif kind == "list":
            expr = f'"null" if {v} is None else "[" + ",".join(map(_enc_str, {v})) + "]"'
        elif kind == "json":
            expr = f't.get("{name}", "null")'
        elif kind == "time":
            expr = f"_quoted_time({v})"
        elif kind == "float":
            expr = f'"null" if {v} is None else float.__repr__(float({v}))'
        else:
            expr = f'"null" if {v} is None else int.__repr__(int({v}))'
        parts.append(json.dumps(name) + ":{" + expr + "}")
    source = (
        "def canonical_text(record):\n"
        "    d = record.__dict__\n"
        "    t = json_texts(record)\n"
        "    return f'''{{" + ",".join(parts) + "}}'''\n"
    )
    namespace: dict[str, Any] = {"_enc_str": _enc_str, "_quoted_time": _quoted_time, "json_texts": json_texts}
    exec(source, namespace)  # source built above from the constant field table
    return namespace["canonical_text"]


def _quoted_time(t: dt.datetime) -> str:
    return '"' + format_time(t) + '"'


_canonical_text = _compile_canonical()


def canonical_text(record: AuditEvent) -> str:
    """``json.dumps(record without record_hash, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` with ``event_time`` in :func:`format_time` spelling."""
    return str(_canonical_text(record))


def canonical_bytes(record: AuditEvent) -> bytes:
    return canonical_text(record).encode("utf-8", "surrogatepass")


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """``sha256(prev_hash || canonical)`` as lowercase hex."""
    h = hashlib.sha256(prev_hash.encode("ascii", "replace"))
    h.update(canonical)
    return h.hexdigest()


def seal(draft: EventDraft, *, chain_id: str, seq: int, prev_hash: str, now: dt.datetime) -> AuditEvent:
    """Complete a draft into a chained record with ``seq`` (the store calls
    :func:`seal_many` under its chain lock)."""
    return seal_many((draft,), chain_id=chain_id, seq=seq - 1, prev_hash=prev_hash, now=now)[0][0]


def seal_many(
    drafts: Iterable[EventDraft], *, chain_id: str, seq: int, prev_hash: str, now: dt.datetime
) -> tuple[list[AuditEvent], list[bytes]]:
    """:func:`seal` the drafts in order after (``seq``, ``prev_hash``): the records and
    the canonical bytes each hash covers (what an intent journal writes, so the store
    does not encode each record twice)."""
    # The drafts were validated already: each record is filled directly instead of
    # paying the dataclass __init__ (a setattr per field) on the hot path.
    records: list[AuditEvent] = []
    canonicals: list[bytes] = []
    new = object.__new__
    sha256 = hashlib.sha256
    prev = prev_hash
    for draft in drafts:
        seq += 1
        values = draft.__dict__.copy()  # every draft field, plus the cached JSON texts
        if values["event_time"] is None:
            values["event_time"] = now
        values["chain_id"] = chain_id
        values["seq"] = seq
        values["prev_hash"] = prev
        values["_json_texts"] = json_texts(draft)  # cached (a draft built via replace() has none yet)
        record = new(AuditEvent)
        d = record.__dict__
        d.update(values)
        canonical = _canonical_text(record).encode("utf-8", "surrogatepass")
        h = sha256(prev.encode("ascii", "replace"))
        h.update(canonical)
        prev = d["record_hash"] = h.hexdigest()
        records.append(record)
        canonicals.append(canonical)
    return records, canonicals


def json_text(value: Json) -> str | None:
    """How a JSON field is stored: canonical text, or NULL."""
    if value is None:
        return None
    return canonical_json(value)


def check_chain_id(chain_id: str) -> str:
    if not isinstance(chain_id, str) or not chain_id or len(chain_id) > 200:
        raise ValueError("chain_id must be a non-empty string of at most 200 characters")
    if _clean_text(chain_id) != chain_id or any(ord(c) < 32 for c in chain_id):
        raise ValueError(f"chain_id {chain_id!r} holds control or unencodable characters")
    return chain_id
