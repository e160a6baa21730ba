"""The ``%%sql`` / ``%sql`` magics and the ``%warden`` helpers.

Every statement goes to the warden gateway (never to a database): the cell's SQL with
``$n`` placeholders, its bound values, and the cell's context (session, kernel, notebook,
cell id, execution count, ``cell_run_id``). The gateway decides for the whole cell:

* allowed / masked — results stream back as Arrow; the last statement's result is
  displayed and returned (or assigned with ``VAR <<``), every statement's result is in
  ``_sql_results``;
* held — the cell shows the approval request and returns at once with one way to go on
  (local mode: ``%warden approve ID --reason ...``; else ask an approver), then re-run:
  warden remembers the request for that exact cell. ``--wait SECONDS`` (or
  ``SqlMagic.wait_for_approval``) waits for the approver instead;
* denied — a :class:`~warden.gateway.client.Denied` error names the rule and reason;
  a cell whose SQL has an error (it does not parse, names an unknown table or column)
  raises :class:`SqlError` instead, with a caret under the spot and the closest names.

An interrupt (Ctrl-C, the stop button) during a query calls the gateway's cancel
endpoint, which cancels the statement in the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from IPython.core.magic import (
    Magics,
    line_cell_magic,
    line_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)
from IPython.display import DisplayHandle
from IPython.display import display as _ipython_display
from traitlets import Bool, Enum, Float, Int, Unicode

from warden.errors import WardenError
from warden.gateway.client import (
    CellResult,
    Denied,
    GatewayError,
    GatewayUnavailable,
    Held,
    QueryFailed,
    Unauthorized,
)
from warden.kernel.client import CellStream, KernelGatewayClient
from warden.kernel.session import WardenSession, get_session
from warden.magic import display as show
from warden.magic import jupysql
from warden.magic.config import JupySQLSettings
from warden.magic.params import BoundSQL, bind
from warden.magic.parse import FORMATS, MagicLine, MagicSyntaxError, parse_magic
from warden.magic.results import statement_info, to_output
from warden.magic.snippets import SnippetStore

_ACTIVE: SqlMagic | None = None
display: Any = _ipython_display  # untyped in IPython


def active() -> SqlMagic | None:
    return _ACTIVE


@dataclass
class StatementOutcome:
    """A statement that returned no rows (DDL, DML): its kind and the rows affected."""

    kind: str
    rowcount: int
    info: dict[str, Any]

    def __repr__(self) -> str:
        if self.rowcount >= 0:
            return f"{self.kind.upper()}: {self.rowcount} row{'s' if self.rowcount != 1 else ''} affected"
        return f"{self.kind.upper()}: done"

    def _repr_html_(self) -> str:
        return f'<div class="warden-outcome">{show.esc(repr(self))}</div>'


class SqlError(Denied):
    """The cell's SQL has an error (it does not parse, or names a table or column that is
    not there): the gateway decided and recorded it, and nothing ran, but it is a mistake
    to fix, not a policy denial. A subclass of :class:`Denied`, so ``except Denied``
    still catches it."""


#: the gateway's rule ids that mean "your SQL has an error", not "the policy denies this"
SQL_ERROR_RULES = frozenset({
    "fail-closed/parse-error", "fail-closed/unknown-column", "fail-closed/unknown-table", "fail-closed/unknown-columns",
})  # fmt: skip

_CELL = "text-align:left;padding:2px 8px;vertical-align:top"


@dataclass
class Report:
    """What ``%warden`` helpers return: the data, shown as a small left-aligned table
    with a header row."""

    title: str
    data: Any
    rows: Sequence[tuple[str, ...]]
    note: str = ""
    headers: tuple[str, ...] = ("", "")

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='{_CELL};border-bottom:1px solid #999'>{show.esc(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{show.esc(v)}</td>" for v in row) + "</tr>" for row in self.rows)
        note = f"<div style='font-size:11px;color:#555'>{show.esc(self.note)}</div>" if self.note else ""
        return (f"<div class='warden-report'><b>{show.esc(self.title)}</b><table class='warden-report-table' style='border-collapse:collapse'>"
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}</div>")  # fmt: skip

    def __repr__(self) -> str:
        table = [tuple(show.plain(h) for h in self.headers), *(tuple(show.plain(v).replace("\n", " ") for v in r) for r in self.rows)]
        widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(self.headers))]
        lines = [self.title]
        for n, row in enumerate(table):
            lines.append("  " + "  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
            if n == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        if self.note:
            lines.append(show.plain(self.note))
        return "\n".join(lines)


@magics_class
class SqlMagic(Magics, JupySQLSettings):
    """Audited SQL through the warden gateway (``%config SqlMagic.<setting> = value``)."""

    displaylimit = Int(10, allow_none=True, help="rows shown in a result's display (0 or None: all, up to 10000)").tag(config=True)
    autolimit = Int(0, allow_none=True, help="rows fetched at most per statement (0 or None: the gateway's limit)").tag(config=True)
    # 0: a held cell returns at once with the request and how to go on (a silent minute
    # of a blocked kernel helps nobody); --wait SECONDS waits for one cell.
    wait_for_approval = Float(0.0, help="seconds a held cell waits for an approver (0: return at once with the request)").tag(config=True)
    approval_poll_interval = Float(1.0, help="seconds between approval status checks while waiting").tag(config=True)
    format = Enum(list(FORMATS), default_value="pandas", help="result type: pandas, arrow or polars").tag(config=True)
    short_errors = Bool(True, help="show warden errors as one clear message instead of a traceback").tag(config=True)
    feedback = Int(1, help="0: only results; 1: progress, holds and summaries").tag(config=True)
    progress_after = Float(1.0, help="seconds before a running query shows progress").tag(config=True)
    default_connection = Unicode("", help="connection used when a cell names none").tag(config=True)

    def __init__(self, shell: Any = None, session: WardenSession | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._session = session
        self._connection: str | None = None
        self._remembered: dict[str, str] = {}  # cell key -> approval id
        self.last_held = ""  # the latest approval request of this kernel (`%warden approve last`)
        self.snippets = SnippetStore()  # --save / --with (JupySQL)

    @property
    def session(self) -> WardenSession:
        return self._session or get_session()

    # -- %sql / %%sql ------------------------------------------------------------------------

    @needs_local_scope
    @line_cell_magic
    @no_var_expand  # IPython would paste {var} and $var into the SQL text: values are bound, never pasted
    def sql(self, line: str, cell: str | None = None, local_ns: dict[str, Any] | None = None) -> Any:
        """Run SQL through the warden gateway.

        %%sql [NAME] [VAR <<] [options]
        %sql  [NAME] [VAR <<] [options] SQL
        %sql  NAME                       (switch the default connection)

        Options: --connection NAME, --format pandas|arrow|polars, --limit ROWS,
        --wait SECONDS (wait for approval), --approval ID, --no-raise, -q/--quiet,
        -l/--connections; JupySQL's -S/--save NAME, -w/--with NAME, -N/--no-execute,
        -f/--file PATH. {{var}} and :var are bound parameters ($1..$n), never text
        ({{var}} after FROM/JOIN/INTO/UPDATE/TABLE is a table name: docs/kernel.md).
        """
        if cell is not None and not cell.strip() and not line.strip():
            return None
        try:
            parsed = parse_magic(line, cell)
        except MagicSyntaxError as exc:
            raise type(exc)(str(exc)) from None
        try:
            return self._sql(parsed, local_ns or {})
        except (Denied, Held, QueryFailed, GatewayError, WardenError) as exc:
            if parsed.no_raise:
                if not getattr(exc, "shown", False):
                    self._show(_error_bundle(exc))
                return None
            raise exc.with_traceback(None) from None

    def _sql(self, parsed: MagicLine, local_ns: dict[str, Any]) -> Any:
        session = self.session
        if parsed.list_connections:
            return self._connections_report(session)
        if parsed.writes_frame:  # --persist/--append: a write through the gateway, decided like an INSERT
            from warden.magic.persist import persist

            return persist(self, parsed, {**(self.shell.user_ns if self.shell is not None else {}), **local_ns})
        if parsed.switch_only and not parsed.file:
            jupysql.refuse_engine_variable(self, str(parsed.connection), lambda: session.known_connections() or [])
            self._connection = parsed.connection
            self._note(f"warden: using connection {parsed.connection}")
            return None
        if not parsed.sql.strip() and not parsed.file:
            raise MagicSyntaxError("no SQL to run: write it in the cell body (%%sql) or after the options (%sql)")
        user_ns = self.shell.user_ns if self.shell is not None else {}

        def lookup(name: str) -> Any:
            if name in local_ns:
                return local_ns[name]
            return user_ns[name]

        sql = jupysql.prepare_sql(self, parsed, lookup)  # --file, templates, snippets
        if sql is None:
            return None  # --save --no-execute
        if parsed.connection:
            jupysql.refuse_engine_variable(self, parsed.connection, lambda: session.known_connections() or [])
        connection = self._pick_connection(parsed, session)
        bound = bind(sql, lookup)
        if connection == "local" and "local" not in (session.known_connections() or []):
            return jupysql.deliver_local(self, parsed, bound, {**user_ns, **local_ns})  # the kernel's own DataFrames
        client = self._client(session)
        result, stream = self._run_with_approval(client, session, connection, bound, parsed)
        return self._deliver(result, stream, session, connection, parsed)

    def _client(self, session: WardenSession) -> KernelGatewayClient:
        from warden.gateway.local import LocalGatewayError

        try:
            return session.client()
        except LocalGatewayError as exc:
            raise GatewayUnavailable(
                f"the local warden gateway could not be started: {exc}. No query ran; the kernel never connects to a database directly.",
                code="unavailable",
            ) from None

    def _pick_connection(self, parsed: MagicLine, session: WardenSession) -> str:
        if parsed.connection:
            self._connection = parsed.connection
            return parsed.connection
        if self._connection:
            return self._connection
        if self.default_connection:
            return str(self.default_connection)
        known = session.known_connections()
        if known and len(known) == 1:
            self._connection = known[0]
            return known[0]
        hint = f" (yours: {', '.join(known)})" if known else ""
        raise MagicSyntaxError(f"which connection? Name it on the first line, e.g. `%%sql NAME`{hint}")

    # -- running, with holds ------------------------------------------------------------

    def _run_with_approval(
        self, client: KernelGatewayClient, session: WardenSession, connection: str, bound: BoundSQL, parsed: MagicLine
    ) -> tuple[CellResult, CellStream]:
        key = json.dumps([connection, bound.sql, list(bound.params)], default=str)
        wait = float(self.wait_for_approval if parsed.wait is None else parsed.wait)
        approval_id = parsed.approval_id
        if approval_id is None and key in self._remembered:
            approval_id = self._check_remembered(client, key, wait)
        max_rows = parsed.limit if parsed.limit is not None else (self.autolimit or None)
        for attempt in range(2):
            try:
                return self._stream(client, session, connection, bound, approval_id, max_rows or None)
            except Held as held:
                approval = held.approval
                aid = str(approval.get("id", ""))
                self._remembered[key] = aid
                self.last_held = aid
                session.record_query({"type": "query.held", "time": _now(), "connection": connection,
                                      "approval_id": aid, "event_id": held.body.get("event_id", ""),
                                      "rule_ids": approval.get("rule_ids", [])})  # fmt: skip
                if attempt == 1:
                    raise
                approval_id = self._wait_for_approval(client, held.body, wait)
                self._remembered.pop(key, None)
            except Denied as denied:
                session.record_query({"type": "query.denied", "time": _now(), "connection": connection,
                                      "event_id": denied.body.get("event_id", ""), "rule_ids": denied.rule_ids})  # fmt: skip
                raise _denial(denied, bound.sql) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_remembered(self, client: KernelGatewayClient, key: str, wait: float) -> str | None:
        aid = self._remembered[key]
        try:
            a = client.retrying(lambda: client.approval(aid))
        except GatewayError:
            self._remembered.pop(key, None)
            return None
        status = a.get("status")
        if status == "approved":
            return aid
        if status == "pending":
            body = {"status": "held", "approval": a, "approvers": {}}
            return self._wait_for_approval(client, body, wait)
        self._remembered.pop(key, None)  # denied, expired, used: ask afresh
        return None

    def _is_local(self) -> bool:
        try:
            return self.session.whoami().get("mode") == "local"
        except (GatewayError, WardenError):
            return False

    def _wait_for_approval(self, client: KernelGatewayClient, body: dict[str, Any], wait: float) -> str:
        """Show the hold; poll until approved (returns the id) or give up (raises)."""
        approval = dict(body.get("approval", {}) or {})
        aid = str(approval.get("id", ""))
        local = self._is_local()
        if wait <= 0:
            # One box, one way to go on; the error under it is one short line.
            self._show(show.message_bundle("Held for approval — nothing ran", show.held_lines(body, waited=0, wait=0, status="pending", local=local), kind="held"), update=True)
            pending = Held(f"held for approval {aid} — nothing ran (the request and how to go on are above)", code="held", body=body)
            pending.shown = True  # type: ignore[attr-defined]  # the hold is on screen already
            raise pending
        started = time.monotonic()
        handle = self._show(show.message_bundle("Held for approval — nothing ran yet", show.held_lines(body, waited=0, wait=wait, status="pending", local=local), kind="held"), update=True)
        status = str(approval.get("status", "pending"))
        try:
            while wait > 0 and time.monotonic() - started < wait:
                time.sleep(min(max(self.approval_poll_interval, 0.05), max(wait - (time.monotonic() - started), 0.01)))
                try:
                    approval = client.retrying(lambda: client.approval(aid))
                except GatewayUnavailable:
                    continue
                status = str(approval.get("status", "pending"))
                if status != "pending":
                    break
                self._update(handle, show.message_bundle("Held for approval — nothing ran yet",
                                                          show.held_lines({**body, "approval": approval}, waited=time.monotonic() - started, wait=wait, status=status, local=local), kind="held"))  # fmt: skip
        except KeyboardInterrupt:
            self._update(handle, show.message_bundle("Stopped waiting for approval", [
                f"approval request {aid} stays open; once it is approved, re-run this cell (warden remembers the request) or use --approval {aid}"], kind="held"))  # fmt: skip
            raise
        if status == "approved":
            who = approval.get("decided_by") or "an approver"
            self._update(handle, show.message_bundle(f"Approved by {who} — running the cell", [
                f"approval {aid}: {approval.get('decision_reason') or ''}".rstrip(": ")], kind="ok"))  # fmt: skip
            return aid
        if status == "denied":
            self._update(handle, show.message_bundle("Approval refused — nothing ran", [f"approval {aid} was refused by {approval.get('decided_by')}: {approval.get('decision_reason')}"], kind="denied"))
            raise Denied(
                f"approval {aid} was refused by {approval.get('decided_by')}: {approval.get('decision_reason')}. Nothing ran.",
                code="approval-refused", body={"approval": approval, "rule_ids": list(approval.get("rule_ids", []))},
            )  # fmt: skip
        if status in ("expired", "used"):
            raise Held(f"approval {aid} is {status}; re-run the cell to ask again. Nothing ran.", code="held", body={**body, "approval": approval})
        lines = show.held_lines({**body, "approval": approval}, waited=time.monotonic() - started, wait=0, status=status, local=local)
        self._update(handle, show.message_bundle("Still held for approval — nothing ran", lines, kind="held"))
        pending = Held(f"held for approval {aid} after waiting {wait:.0f} s — nothing ran (the request and how to go on are above)",
                       code="held", body={**body, "approval": approval})  # fmt: skip
        pending.shown = True  # type: ignore[attr-defined]  # the hold is on screen already
        raise pending

    def _stream(
        self, client: KernelGatewayClient, session: WardenSession, connection: str, bound: BoundSQL,
        approval_id: str | None, max_rows: int | None,
    ) -> tuple[CellResult, CellStream]:  # fmt: skip
        run = session.current
        context = session.context()
        if run is None:
            context["cell_run_id"] = session.ensure_cell().cell_run_id
            if self.shell is not None:
                context["execution_count"] = getattr(self.shell, "execution_count", None)
        stream = client.start_cell(connection, bound.sql, bound.params, context=context, approval_id=approval_id, max_rows=max_rows)
        handle: DisplayHandle | None = None
        last = 0.0
        try:
            step = 0.05
            while not stream.wait(step):
                step = 0.25
                now = stream.elapsed
                if self.feedback >= 1 and now >= self.progress_after and now - last >= 0.5:
                    bundle = show.progress_bundle(stream.state, elapsed=now, received=stream.received, rows=stream.rows)
                    if handle is None:
                        handle = self._show(bundle, update=True)
                    else:
                        self._update(handle, bundle)
                    last = now
        except KeyboardInterrupt:
            found = stream.cancel()
            stream.join(10.0 if found else 3.0)
            qid = stream.query_id
            message = (f"warden: interrupted — query {qid} was cancelled in the database by the gateway" if found
                       else f"warden: interrupted — query {qid or '(not started)'} stopped")  # fmt: skip
            session.record_query({"type": "query.cancelled", "time": _now(), "connection": connection, "query_id": qid or ""})
            if handle is not None:
                self._update(handle, {"text/plain": message})
            else:
                self._note(message)
            raise
        try:
            result = stream.result()
        except QueryFailed as exc:
            trailer = exc.body.get("trailer", {}) if isinstance(exc.body, dict) else {}
            session.record_query({"type": "query.failed", "time": _now(), "connection": connection, "query_id": stream.query_id or "",
                                  "event_id": trailer.get("event_id", ""), "status": exc.code})  # fmt: skip
            if handle is not None:
                self._update(handle, {"text/plain": ""})
            raise QueryFailed(_failed_message(exc, stream), code=exc.code, body=exc.body) from None
        except GatewayUnavailable as exc:
            raise GatewayUnavailable(_unavailable_message(str(exc)), code=exc.code, body=exc.body) from None
        except Unauthorized as exc:
            raise Unauthorized(
                f"the warden gateway refused this kernel's identity ({exc}); the token comes from "
                f"{client.tokens.describe}. Set WARDEN_TOKEN or WARDEN_TOKEN_FILE, or the service-account variables.",
                code=exc.code, body=exc.body,
            ) from None  # fmt: skip
        if handle is not None:
            self._update(handle, show.progress_bundle("done", elapsed=stream.elapsed, received=stream.received, rows=stream.rows)
                         if self.feedback >= 1 else {"text/plain": ""})  # fmt: skip
        session.record_query({"type": "query.executed", "time": _now(), "connection": connection, "query_id": stream.query_id or "",
                              "event_id": result.header.get("event_id", ""), "completion_event_id": result.trailer.get("event_id", ""),
                              "action": result.header.get("action"), "rows": result.trailer.get("rows"),
                              "approval_id": result.header.get("approval_id")})  # fmt: skip
        return result, stream

    # -- results --------------------------------------------------------------------------

    def _deliver(self, result: CellResult, stream: CellStream, session: WardenSession, connection: str, parsed: MagicLine) -> Any:
        fmt = parsed.format or str(self.format)
        cell_run_id = str(session.context().get("cell_run_id", ""))
        outputs: list[Any] = []
        infos: list[dict[str, Any]] = []
        for st in result.statements:
            info = statement_info(result, st, stream.statement_meta.get(st.index, {}), connection=connection, cell_run_id=cell_run_id)
            infos.append(info)
            if st.table is not None:
                outputs.append(jupysql.shape_output(self, to_output(st.table, info, fmt), parsed.format is not None))
            else:
                outputs.append(StatementOutcome(st.kind, st.rowcount, info))
        if self.shell is not None:
            self.shell.user_ns["_sql_results"] = outputs
        if not outputs:
            return None
        last, info = outputs[-1], infos[-1]
        if jupysql.assign_columns(self, last):
            return None  # column_local_vars: the columns are variables now (JupySQL)
        if parsed.target:
            if self.shell is not None:
                self.shell.user_ns[parsed.target] = last
            if self.feedback >= 1 and not parsed.quiet:
                rows, cols = _shape(last)
                self._note(show.summary_line(parsed.target, info, rows, cols, len(outputs)))
            return None
        if self.feedback >= 1 and not parsed.quiet and len(outputs) > 1:
            self._note(show.summary_line(None, info, 0, 0, len(outputs)))
        if parsed.quiet:
            return None
        return last

    # -- %warden -----------------------------------------------------------------------------

    @line_magic
    @no_var_expand
    def warden(self, line: str) -> Any:
        """%warden whoami | approvals [--status S] | approve ID --reason TEXT | deny ID --reason TEXT | audit [--limit N] | help"""
        words = _split(line)
        cmd = words[0] if words else "help"
        session = self.session
        try:
            if cmd == "whoami":
                return self._whoami(session)
            if cmd == "approvals":
                status = _option(words, "--status")
                return self._approvals(session, status)
            if cmd == "audit":
                limit = int(_option(words, "--limit") or 20)
                return self._audit(session, limit)
            if cmd in ("approve", "deny"):
                return self._decide(session, words, approve=cmd == "approve")
        except GatewayError as exc:
            raise type(exc)(_unavailable_message(str(exc)) if isinstance(exc, GatewayUnavailable) else str(exc), code=exc.code, body=exc.body) from None
        return Report("%warden helpers", None, [
            ("whoami", "who the gateway says you are, your roles, the mode and your connections"),
            ("approvals", "your approval requests (approvers: all); --status pending|approved|denied|expired|used"),
            ("approve ID --reason TEXT", "approve a held request (an approver; in local mode also your own, recorded as a self-approval); ID `last`: this kernel's latest"),
            ("deny ID --reason TEXT", "refuse a held request (an approver)"),
            ("audit", "recent audit events of this kernel session; --limit N"),
        ], headers=("command", "what it does"))  # fmt: skip

    def _decide(self, session: WardenSession, words: list[str], *, approve: bool) -> Report:
        verb = "approve" if approve else "deny"
        ids = [w for w in words[1:] if not w.startswith("--") and w != _option(words, "--reason")]
        reason = _option(words, "--reason") or ""
        if len(ids) != 1 or not reason.strip():
            raise MagicSyntaxError(f'usage: %warden {verb} ID --reason "why" (the reason is recorded in the audit log)')
        aid = self.last_held if ids[0] == "last" else ids[0]
        if not aid:
            raise MagicSyntaxError("no cell of this kernel was held yet: name the request, %warden approve apr_… --reason …")
        client = session.client()
        decided = client.retrying(lambda: client.decide(aid, approve=approve, reason=reason))
        rows = [(k, str(decided.get(k) or "")) for k in ("id", "status", "requester", "decided_by", "decision_reason", "sql")]
        rows.append(("expires", show.relative_time(str(decided.get("expires_at", "")))))
        note = "re-run the held cell: warden remembers the request" if approve else "the cell stays refused; nothing ran"
        return Report(f"approval {decided.get('id')} {decided.get('status')}", decided, rows, note, headers=("field", "value"))

    def _whoami(self, session: WardenSession) -> Report:
        me = session.whoami(refresh=True)
        client = session.client()
        rows = [
            ("subject", f"{me.get('subject')} ({me.get('kind', 'human')})"),
            ("display name", str(me.get("display_name") or "")),
            ("groups", ", ".join(me.get("groups", [])) or "-"),
            ("roles", ", ".join(me.get("roles", [])) or "none"),
            ("approver", "yes" if me.get("approver") else "no"),
            ("auditor", ("yes (your own log: local mode)" if me.get("mode") == "local" else "yes") + " — %%sql audit"
             if me.get("auditor") else "no"),
            ("connections", ", ".join(me.get("connections", [])) or "-"),
            ("mode", str(me.get("mode", ""))),
            ("gateway", f"{me.get('gateway_id', '')} at {client.where}"),
            ("identity from", client.tokens.describe),
            ("session", session.session_id),
            ("kernel", session.kernel_id or "-"),
            ("notebook", session.notebook_path or "-"),
        ]
        return Report("warden whoami", me, rows, str(me.get("note", "")), headers=("field", "value"))

    def _approvals(self, session: WardenSession, status: str | None) -> Report:
        client = session.client()
        items = client.retrying(lambda: client.approvals(status))
        rows = [(str(a.get("id")), str(a.get("status")), str(a.get("requester")), str(a.get("connection")), ", ".join(a.get("rule_ids", [])),
                 show.relative_time(str(a.get("expires_at"))) if a.get("expires_at") else "", " ".join(str(a.get("sql", "")).split()))
                for a in items]  # fmt: skip
        return Report(f"approval requests{' (' + status + ')' if status else ''}: {len(items)}", items, rows,
                      headers=("id", "status", "requester", "connection", "rules", "expires", "sql"))  # fmt: skip

    def _audit(self, session: WardenSession, limit: int) -> Report:
        client = session.client()
        note = ""
        try:
            events = client.retrying(lambda: client.session_events(session.session_id, limit=limit))
            source = "the gateway's audit log"
        except GatewayError as exc:
            if isinstance(exc, GatewayUnavailable):
                raise
            events = list(session.history)[-limit:]
            source = "this kernel's own record"
            note = (f"The gateway did not let this identity read the audit log ({exc}). Shown: what this kernel "
                    "knows of its own trail; the authoritative records are in the gateway's audit store "
                    "(an auditor reads them with `warden audit` or GET /v1/audit?session_id=…).")  # fmt: skip
        from warden.magic.audit_rows import AUDIT_HEADERS, audit_rows

        rows = audit_rows(events, limit)
        title = f"audit events of session {session.session_id} ({source}): {len(rows)}"
        return Report(title, events, rows, note, headers=AUDIT_HEADERS)

    def _connections_report(self, session: WardenSession) -> Report:
        me = session.whoami()
        rows = [(str(c), "current" if c == self._connection else "") for c in me.get("connections", [])]
        return Report("connections (from the gateway's policy)", me.get("connections", []), rows, headers=("connection", ""))

    # -- output helpers -------------------------------------------------------------------------

    def _show(self, bundle: dict[str, str], *, update: bool = False) -> DisplayHandle | None:
        if self.feedback < 1 and not update:
            return None
        handle = display(bundle, raw=True, display_id=True) if update else display(bundle, raw=True)
        return handle if isinstance(handle, DisplayHandle) else None

    def _update(self, handle: DisplayHandle | None, bundle: dict[str, str]) -> None:
        if handle is not None:
            handle.update(bundle, raw=True)  # type: ignore[no-untyped-call]
        else:
            display(bundle, raw=True)

    def _note(self, text: str) -> None:
        if self.feedback >= 1 and text:
            display({"text/plain": text, "text/html": f'<div style="font-size:11px;color:#555">{show.esc(text)}</div>'}, raw=True)

    def displayed_rows(self) -> int:
        limit = int(self.displaylimit or 0)  # None (JupySQL: no limit) is 0
        return 10_000 if limit <= 0 else min(limit, 10_000)


def _split(line: str) -> list[str]:
    """The words of a ``%warden`` line; quotes group (``--reason "ticket 42"``)."""
    import shlex

    try:
        return shlex.split(line)
    except ValueError as exc:
        raise MagicSyntaxError(f"%warden: {exc}") from None


def _option(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def _shape(obj: Any) -> tuple[int, int]:
    shape = getattr(obj, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return 0, 0


def _now() -> str:
    from warden.kernel.events import now_iso

    return now_iso()


def _reasons(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule, message) of a denial, each said once: the gateway may give the same fact
    from the cell and from its statement, which only the prefix tells apart."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for r in body.get("reasons", []) or []:
        if not isinstance(r, dict):
            continue
        rule, message = str(r.get("rule", "")), str(r.get("message", ""))
        key = (rule, _core(message))
        if key not in seen:
            seen.add(key)
            out.append((rule, message))
    return out


def _core(message: str) -> str:
    """A message without its ``statement N (kind):`` prefixes (to find repeats)."""
    import re

    return re.sub(r"^(statement \d+( \([^)]*\))?: )+", "", message)


def _denial(exc: Denied, sql: str) -> Denied:
    """The kernel's form of a gateway denial: :class:`SqlError` when the SQL has an error
    (a caret under the spot), else :class:`Denied` naming each rule once."""
    body = exc.body
    reasons = _reasons(body)
    event = f" (audit event {body['event_id']})" if body.get("event_id") else ""
    errors = [(r, m) for r, m in reasons if r in SQL_ERROR_RULES]
    if not errors:
        parts = [f"[{r}] {m}" for r, m in reasons] or [str(exc)]
        return Denied("the policy does not allow this — nothing ran: " + "; ".join(parts) + event, code=exc.code, body=body)
    parse = [(r, m) for r, m in errors if r == "fail-closed/parse-error"]
    if parse:
        # A statement that does not parse has no kind: "none of your roles allows other
        # statements" is a consequence, not news. One parse error is enough to fix first.
        errors = parse[:1]
        others: list[tuple[str, str]] = []
    else:
        others = [(r, m) for r, m in reasons if r not in SQL_ERROR_RULES]
    lines: list[str] = []
    for rule, message in errors:
        text = show.strip_position(_core(message))
        where = show.error_position(message)
        if rule == "fail-closed/parse-error":
            lines.append(_parse_error_text(sql, text, where))
        else:
            where = where or _find_name(sql, text)
            lines.append(text + (_caret(sql, where) if where else ""))
    if others:
        lines.append("the policy also denies it: " + "; ".join(f"[{r}] {m}" for r, m in others))
    return SqlError("your SQL has an error — nothing ran" + event + "\n" + "\n".join(lines), code="sql-error", body=body)


def _find_name(sql: str, message: str) -> tuple[int, int] | None:
    """Where the name a message quotes (``column 'idd'``, ``table custmers``) first
    appears in the cell as a word, when the gateway gave no position."""
    import re

    found = re.search(r"(?:column|table) '?([\w.]+?)'?(?:[ ;,]|$)", message)
    if found is None:
        return None
    name = found.group(1).split(".")[-1]
    for n, line in enumerate(sql.splitlines(), start=1):
        hit = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)|(?<=\.){re.escape(name)}(?!\w)", line, re.IGNORECASE)
        if hit:
            return n, hit.end()
    return None


def _caret(sql: str, where: tuple[int, int]) -> str:
    excerpt = show.caret_excerpt(sql, *where)
    return ("\n" + excerpt) if excerpt else ""


_STARTS = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "EXPLAIN",
           "VALUES", "TABLE", "SHOW", "DESCRIBE", "SET", "RESET", "COPY", "GRANT", "REVOKE", "BEGIN", "COMMIT", "ROLLBACK",
           "PIVOT", "UNPIVOT", "FROM", "SUMMARIZE", "ANALYZE", "VACUUM", "CALL", "USE", "PRAGMA", "ATTACH", "DETACH")  # fmt: skip


def _parse_error_text(sql: str, text: str, where: tuple[int, int] | None) -> str:
    """One parse error. When a statement starts with a word that is no SQL keyword (a
    typo of SELECT), point there: the parser only noticed further on."""
    import difflib
    import re

    text = re.sub(r"^statement \d+ could not be parsed: ", "could not parse the SQL: ", text)
    for n, line in enumerate(sql.splitlines(), start=1):
        found = re.match(r"\s*([A-Za-z_]+)", line)
        if found is None or line.lstrip().startswith("--"):
            continue
        word = found.group(1)
        if word.upper() not in _STARTS:
            close = difflib.get_close_matches(word.upper(), _STARTS, n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            return f"`{word}` does not start an SQL statement{hint}" + _caret(sql, (n, found.end(1)))
        break  # only the first statement's first word is checked: the rest is the parser's
    return text + (f" (line {where[0]}, column {where[1]})" + _caret(sql, where) if where else "")


def _failed_message(exc: QueryFailed, stream: CellStream) -> str:
    trailer = exc.body.get("trailer", {}) if isinstance(exc.body, dict) else {}
    event = f" (audit event {trailer['event_id']})" if trailer.get("event_id") else ""
    if exc.code == "cancelled":
        return f"query {stream.query_id or ''} was cancelled in the database{event}"
    if exc.code == "timeout":
        return f"the statement timed out in the database: {exc}{event}"
    return f"the database failed the query ({exc.code}): {exc}{event}"


def _unavailable_message(text: str) -> str:
    tail = " The kernel never connects to a database directly: start the gateway, or check WARDEN_GATEWAY_URL."
    if "never connects" in text:
        return text
    return text.rstrip(". ") + "." + tail


def _error_bundle(exc: BaseException) -> dict[str, str]:
    titles: dict[type[BaseException], str] = {
        SqlError: "Your SQL has an error — nothing ran",
        Denied: "The policy does not allow this — nothing ran",
        Held: "Held for approval — nothing ran",
        QueryFailed: "The query failed",
        GatewayUnavailable: "The warden gateway is unavailable — nothing ran",
        Unauthorized: "The warden gateway refused this identity",
    }
    title = titles.get(type(exc), type(exc).__name__)
    lines = str(exc).split("\n")
    if lines[0].lower().startswith(title.lower() + ": "):
        lines[0] = lines[0][len(title) + 2 :]  # said by the title already
    if isinstance(exc, SqlError):
        # The first line repeats the title; the excerpt with its caret stays monospaced.
        body = lines[1:]
        return show.message_bundle(title, [ln for ln in body if not ln.startswith(("line ", " "))], kind="error",
                                   code="\n".join(ln for ln in body if ln.startswith(("line ", " "))))  # fmt: skip
    return show.message_bundle(title, lines, kind="denied" if isinstance(exc, (Denied, GatewayUnavailable, Unauthorized)) else "held")


def short_error_handler(magic: Callable[[], SqlMagic | None]) -> Callable[..., list[str] | None]:
    """A custom exception handler: warden errors as one line, no traceback."""

    def handler(shell: Any, etype: type[BaseException], value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str] | None:
        m = magic()
        if m is not None and not m.short_errors:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return None
        stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {show.plain(value)}"]
        shell._showtraceback(etype, value, stb)
        return stb

    return handler


def register(shell: Any, session: WardenSession | None = None) -> SqlMagic:
    global _ACTIVE
    magic = SqlMagic(shell=shell, session=session)
    shell.register_magics(magic)
    shell.configurables.append(magic)
    _ACTIVE = magic
    return magic
