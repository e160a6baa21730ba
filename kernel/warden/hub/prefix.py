"""The gateway behind the Hub's proxy: JupyterHub routes ``/services/<name>/`` (after the
Hub's base URL) to a service that has a ``url``, passing the full path on. This ASGI
middleware serves ``<prefix>v1/...`` as ``/v1/...``; direct requests (``/v1/...``) are
unchanged, so kernels may use either address."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


class StripServicePrefix:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")  # "/services/warden" (or "/jhub/services/warden")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                rest = path[len(self.prefix) :] or "/"
                scope = dict(scope)
                scope["path"] = rest
                scope["raw_path"] = rest.encode()
                scope["root_path"] = scope.get("root_path", "") + self.prefix
        await self.app(scope, receive, send)


def service_prefix(service_name: str, environ: Any) -> str:
    """The Hub's prefix for the service: ``$JUPYTERHUB_SERVICE_PREFIX`` (a managed service
    with a url; it includes the Hub's base URL) or ``/services/<name>/``."""
    return str(environ.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{service_name}/")
