"""The HTTP sites of k3stw's listeners: quiet, as k3s's are."""

from __future__ import annotations

from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from k3stw.logs import Logger, debug_enabled

#: Connection-level headers (RFC 9110 7.6.1, Go's httputil list), which a proxy never relays.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


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
