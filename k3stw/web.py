"""The HTTP sites of k3stw's listeners: quiet, as k3s's are."""

from __future__ import annotations

from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from k3stw.logs import Logger, debug_enabled


class QuietSite(Site):
    """
    No access log and no "Starting factory" lines, as k3s; with ``--debug``,
    one line a request.  Tracebacks are never shown to clients.
    """

    noisy = False
    displayTracebacks = False
    _log = Logger()

    def log(self, request: Request) -> None:
        if debug_enabled():
            self._log.debug(
                "{method} {uri} {code} from {client}",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                code=request.code,
                client=str(request.getClientAddress()),
            )


def finish(request: IRequest, body: bytes) -> None:
    """Write C{body} and end a late response, unless the client has gone."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.write(body)
    request.finish()
