"""`SyncDebugServer`: the handle of the debug HTTP endpoint that `SyncClient.serve_debug()` started."""

from __future__ import annotations

from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._sync.portal import Portal


class SyncDebugServer:
    """The debug endpoint, serving on the client's loop thread. It closes with the client, or earlier with
    close()."""

    def __init__(self, portal: Portal, server: DebugServer) -> None:
        self._portal = portal
        self._server = server

    @property
    def host(self) -> str:
        """The address the endpoint listens on."""
        return self._server.host

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return self._server.port

    @property
    def url(self) -> str:
        """``http://host:port``"""
        return self._server.url

    def close(self) -> None:
        """Stop listening and end every open connection. Idempotent; nothing to do once the client is
        closed (the server closed with it)."""
        self._portal.call_unless_closed(self._server.close())


__all__ = ["SyncDebugServer"]
