"""The warden kernel: IPython with ``%%sql`` through the gateway and an audit event for
every cell.

* Every execute request (Python cells too) becomes a ``cell.execute`` event at the
  gateway: cell id (``metadata.cellId``, sent by JupyterLab), notebook path
  (``JPY_SESSION_NAME``), execution count, a hash and a redacted copy of the source,
  duration and status. SQL run by the cell carries the same ``cell_run_id``.
* Session start and end are events too.
* The debugger is off (kernel_info lists no ``debugger`` feature, debug requests are
  refused): stepping through frames would be a way around the magic's display rules and
  the kernelspec says ``debugger: false`` so JupyterLab does not offer it.
* The kernel holds no database credentials and never connects to a database: every
  query goes through the gateway (local mode starts one on demand).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import sys
import threading
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from IPython import __version__ as ipython_version

from warden import __version__
from warden.kernel.session import WardenSession, kernel_id_from_connection_file, set_session

BANNER = (
    f"warden {__version__} — audited SQL for Jupyter (IPython {ipython_version}, Python {sys.version.split()[0]})\n"
    "%%sql NAME runs SQL through the warden gateway, which decides, masks and audits it.\n"
    "%warden whoami shows who you are to the gateway; every cell is recorded."
)


class WardenKernel(IPythonKernel):
    implementation = "warden"
    implementation_version = __version__
    banner = BANNER

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        connection_file = ""
        app = IPKernelApp.initialized() and IPKernelApp.instance()
        if app:
            connection_file = str(getattr(app, "connection_file", "") or "")
        self.warden = WardenSession(kernel_id=kernel_id_from_connection_file(connection_file))
        set_session(self.warden)
        from warden.magic import load_ipython_extension

        load_ipython_extension(self.shell, self.warden)
        self.warden.start(implementation="warden", version=__version__, python=sys.version.split()[0])
        # Connect in the background (local mode may start the gateway): kernel_info
        # must answer at once; the first %%sql waits for the connection if needed.
        threading.Thread(target=self._connect, name="warden-connect", daemon=True).start()
        atexit.register(self._end_session)

    def _connect(self) -> None:
        with contextlib.suppress(Exception):
            self.warden.client()

    def _end_session(self) -> None:
        with contextlib.suppress(Exception):
            self.warden.end(timeout=3.0)

    @property
    def kernel_info(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(super().kernel_info)
        info["supported_features"] = [f for f in info.get("supported_features", []) if f != "debugger"]
        info["banner"] = BANNER
        return info

    async def do_debug_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "response",
            "request_seq": msg.get("seq"),
            "success": False,
            "command": msg.get("command"),
            "message": "the debugger is switched off in the warden kernel",
        }

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        count = getattr(self.shell, "execution_count", None) if not silent else None
        run = self.warden.begin_cell(code, cell_id=cell_id or (cell_meta or {}).get("cellId"), execution_count=count, silent=silent)
        status, ename, evalue = "error", "", ""
        try:
            reply: dict[str, Any] = await super().do_execute(  # type: ignore[no-untyped-call]
                code, silent, store_history, user_expressions, allow_stdin, cell_meta=cell_meta, cell_id=cell_id
            )
            status = str(reply.get("status", "error"))
            ename, evalue = str(reply.get("ename", "")), str(reply.get("evalue", ""))
            return reply
        except BaseException as exc:
            ename, evalue = type(exc).__name__, str(exc)
            raise
        finally:
            self.warden.end_cell(run, status=status, ename=ename, evalue=evalue)

    def _send_abort_reply(self, stream: Any, msg: dict[str, Any], idents: Any) -> None:
        """An execute request aborted after an earlier error is a cell event too."""
        if msg.get("header", {}).get("msg_type") == "execute_request":
            with contextlib.suppress(Exception):
                content = msg.get("content", {}) or {}
                meta = msg.get("metadata", {}) or {}
                self.warden.record_aborted(str(content.get("code", "")), cell_id=meta.get("cellId"), silent=bool(content.get("silent")))
        super()._send_abort_reply(stream, msg, idents)  # type: ignore[no-untyped-call]

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self._end_session()
        result = super().do_shutdown(restart)  # type: ignore[no-untyped-call]
        if inspect.isawaitable(result):
            result = await result
        return dict(result)


def main(argv: list[str] | None = None) -> None:
    """``python -m warden.kernel -f CONNECTION_FILE`` (what the kernelspec runs)."""
    IPKernelApp.launch_instance(argv=argv, kernel_class=WardenKernel)
