"""The jupyter_server extension behind the warden labextension.

It talks to the gateway server-side, as the identity this Jupyter server already has
(local mode: the local gateway's token file; shared mode: ``WARDEN_TOKEN`` /
``WARDEN_TOKEN_FILE`` / a service account / the Hub token, exactly as the kernel finds
them, :mod:`warden.kernel.tokens`). The browser only ever talks to this server, with the
server's own authentication, and never holds a gateway token.

Enable it with ``jupyter server extension enable warden.server`` (the wheel ships the
config in ``etc/jupyter/jupyter_server_config.d/warden.json``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["_jupyter_labextension_paths", "_jupyter_server_extension_points", "_load_jupyter_server_extension"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "warden.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyterlab-warden"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from warden.server.handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("warden: server extension loaded (/warden/api)")
