"""
HTTP/1.1 heads for the Ingress proxy, sans-IO: a request's head as the
proxy forwards it (its routing fields picked out, its hop-by-hop headers
dropped, its framing checked), a response's head likewise, and a direct
write to a TCP transport.

Parsing keeps each header line as the bytes it came as: the proxy forwards
lines, it never rebuilds a header map.  Malformed input raises
L{BadRequest} with the status and reason Go's net/http (Traefik's server)
answers with.  Bodies are read by L{k3stw.upgrade.BodyReader}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import tcp

from k3stw.web import HOP_BY_HOP

__all__ = ["BadRequest", "RequestHead", "ResponseHead", "parse_request", "parse_response", "send"]

#: The most a head (request line or status line and headers) may take.
MAX_HEAD = 64 * 1024

#: RFC 9110's token characters (method and header names).
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# The common heads take a fast path: one regular expression checks the whole
# head (what the line by line parse below checks, for these heads), a second
# finds the few lines the proxy reads; when any of those is there but Host (or a
# response's Content-Length), or the head is not plain, the line by line parse
# decides (and words the refusal).  Two C calls instead of a dozen per line:
# the heads were a third of the proxy's own CPU per request.
#: A header line's name (RFC 9110's token), and the rest of a line.
_NAME = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REST = rb"[^\r\n\0]*"
#: A well-formed origin-form HTTP/1.1 request head: method, target, header lines.
_PLAIN_REQUEST = re.compile(
    rb"(%s) (/[^ \r\n\0]*) HTTP/1\.1((?:\r\n%s:%s)*)" % (_NAME, _NAME, _REST)
)
#: A well-formed HTTP/1.1 response head: status (code and reason), header lines.
_PLAIN_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([0-9]{3}(?: %s)?)((?:\r\n%s:%s)*)" % (_REST, _NAME, _REST)
)


def _own(names: frozenset[bytes] | set[bytes], value: bytes = b"") -> re.Pattern[bytes]:
    """Header lines named by one of C{names} in a lowercased head: names (and C{value})."""
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    return re.compile(rb"\r\n(%s):%s" % (alternatives, value))


#: Response headers of the connection, not of the response.
_RESPONSE_OWN = HOP_BY_HOP | {b"content-length"}
#: Request headers the proxy reads or sets itself rather than forwarding as they came.
_REQUEST_OWN = _RESPONSE_OWN | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
}
#: Lines of a request or response head the proxy reads (beside the ones it forwards).
_REQUEST_READ = _own(_REQUEST_OWN | {b"host"})
_RESPONSE_READ = _own(_RESPONSE_OWN, rb"([^\r\n]*)")


class BadRequest(Exception):
    """A request the proxy refuses: C{code} and a reason in Go's words."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


def _connection(value: bytes, keep_alive: bool) -> tuple[bool, bool, set[bytes]]:
    """What ``Connection`` says: keep-alive, whether it asks to upgrade, the headers it names."""
    upgrade = False
    named: set[bytes] = set()
    for token in _tokens(value):
        if token == b"close":
            keep_alive = False
        elif token == b"keep-alive":
            keep_alive = True
        elif token == b"upgrade":
            upgrade = True
        elif token:
            named.add(token)
    return keep_alive, upgrade, named


def _clean(head: bytes) -> bool:
    """Whether every line of C{head} ends with CRLF (no bare CR or LF) and it has no NUL."""
    crlf = head.count(b"\r\n")
    return head.count(b"\n") == crlf and head.count(b"\r") == crlf and b"\0" not in head


def _length(current: int | None, value: bytes) -> int:
    """A Content-Length value; repeats must agree."""
    if current is None and value.isdigit() and value.isascii():
        return int(value)
    values = {v.strip() for v in value.split(b",")}
    if len(values) != 1:
        raise ValueError(value)
    text = values.pop()
    if not text.isdigit() or not text.isascii():
        raise ValueError(value)
    length = int(text)
    if current is not None and current != length:
        raise ValueError(value)
    return length


class RequestHead:
    """
    A parsed request head.

    :ivar line: the request line as it came (for the access log).
    :ivar target: the path and query (origin-form), as sent on.
    :ivar host: the ``Host`` (or the absolute target's authority).
    :ivar headers: the header lines forwarded as they came, each after a CRLF.
    :ivar length: ``Content-Length``, None if absent.
    :ivar chunked: whether the body is chunked.
    :ivar keep_alive: whether the client keeps the connection after the response.
    :ivar upgrade: the ``Upgrade`` value when ``Connection`` asks for it.
    :ivar forwarded_for: the ``X-Forwarded-For`` the client sent.
    :ivar http10: whether the client speaks HTTP/1.0 (no chunked responses).
    """

    __slots__ = (
        "chunked",
        "forwarded_for",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "length",
        "line",
        "method",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes = b"",
        target: bytes = b"",
        line: bytes = b"",
        host: bytes | None = None,
        headers: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.line = line
        self.host = host
        self.headers = headers
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.http10 = False


def parse_request(head: bytes) -> RequestHead:
    """
    The request whose head (without its final empty line) is C{head}.

    :raises BadRequest: malformed (400), a version other than 1.0/1.1 (505).
    """
    plain = _PLAIN_REQUEST.fullmatch(head)
    if plain is not None:
        headers = plain[3]
        lower = headers.lower()
        if _REQUEST_READ.findall(lower) == [b"host"]:
            start = lower.find(b"\r\nhost:") + 7
            end = headers.find(b"\r\n", start)
            host = headers[start : end if end >= 0 else len(headers)].strip()
            return RequestHead(plain[1], plain[2], head[: plain.start(3)], host, headers)
    return _parse_request_lines(head)


def _parse_request_lines(head: bytes) -> RequestHead:
    """L{parse_request}, line by line: any head, and the words of its refusal."""
    if not _clean(head):
        raise BadRequest(400, "malformed HTTP request")
    lines = head.split(b"\r\n")
    request = RequestHead()
    line = request.line = lines[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, f"malformed HTTP request {line[:80].decode('latin-1')!r}")
    method, target, version = parts
    if version != b"HTTP/1.1":
        if version == b"HTTP/1.0":
            request.http10 = True
            request.keep_alive = False
        elif version.startswith(b"HTTP/") and version[5:].replace(b".", b"").isdigit():
            raise BadRequest(505, "unsupported protocol version")
        else:
            raise BadRequest(400, "malformed HTTP version")
    if not method or method.translate(None, _TOKEN):
        raise BadRequest(400, "invalid method")
    request.method = method
    if target[:1] != b"/":
        lower = target[:8].lower()
        if lower.startswith(b"http://") or lower.startswith(b"https://"):
            # Absolute form: its authority is the host.
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            request.host = authority
        elif target != b"*" or method != b"OPTIONS":
            raise BadRequest(400, "invalid request target")
    request.target = target
    forward: list[bytes] = []
    drop: set[bytes] | None = None
    upgrade: bytes | None = None
    hosts = 0
    for entry in lines[1:]:
        name, colon, value = entry.partition(b":")
        if not colon or not name:
            raise BadRequest(400, "malformed MIME header line")
        lower = name.lower()
        if lower == b"host":
            hosts += 1
            if hosts > 1:
                raise BadRequest(400, "too many Host headers")
            if request.host is None:
                request.host = value.strip()
            forward.append(entry)
        elif lower in _REQUEST_OWN:
            value = value.strip()
            if lower == b"content-length":
                try:
                    request.length = _length(request.length, value)
                except ValueError:
                    raise BadRequest(400, "bad Content-Length") from None
            elif lower == b"transfer-encoding":
                codings = _tokens(value)
                if codings[-1] != b"chunked" or request.chunked:
                    raise BadRequest(501, "unsupported transfer encoding")
                request.chunked = True
            elif lower == b"connection":
                request.keep_alive, asks, named = _connection(value, request.keep_alive)
                if asks:
                    request.upgrade = b""
                if named:
                    drop = (drop or set()) | named
            elif lower == b"upgrade":
                upgrade = value
            elif lower == b"x-forwarded-for":
                previous = request.forwarded_for
                request.forwarded_for = value if previous is None else previous + b", " + value
        elif name.translate(None, _TOKEN):
            raise BadRequest(400, "invalid header name")
        else:
            forward.append(entry)
    if request.upgrade is not None:
        # Only an Upgrade named by Connection (and present) is an upgrade.
        request.upgrade = upgrade or None
    if request.chunked and request.length is not None:
        raise BadRequest(400, "both Transfer-Encoding and Content-Length")
    if request.chunked and request.http10:
        raise BadRequest(400, "chunked encoding in an HTTP/1.0 request")
    if request.host is None:
        if not request.http10:
            raise BadRequest(400, "missing required Host header")
        request.host = b""
    if drop:
        forward = [e for e in forward if e.partition(b":")[0].lower() not in drop]
    request.headers = b"".join([b"\r\n" + e for e in forward])
    return request


class ResponseHead:
    """
    A parsed response head.

    :ivar status: the status line after its version (``200 OK``).
    :ivar headers: the header lines relayed as they came, each after a CRLF
        (framing and hop-by-hop ones left out); not made for a verbatim head.
    :ivar length: ``Content-Length``, None if absent.
    :ivar keep_alive: whether the backend keeps the connection.
    :ivar verbatim: whether the head as it came (HTTP/1.1, one plain
        ``Content-Length``, nothing to leave out) is what the proxy sends on,
        a ``Connection`` line added if need be.
    """

    __slots__ = ("chunked", "code", "headers", "keep_alive", "length", "status", "verbatim")

    def __init__(
        self, code: int = 0, status: bytes = b"", length: int | None = None, verbatim: bool = False
    ) -> None:
        self.code = code
        self.status = status
        self.headers = b""
        self.length = length
        self.chunked = False
        self.keep_alive = True
        self.verbatim = verbatim


def parse_response(head: bytes) -> ResponseHead:
    """
    The response whose head (without its final empty line) is C{head}.

    :raises ValueError: malformed.
    """
    plain = _PLAIN_RESPONSE.fullmatch(head)
    if plain is not None:
        found = _RESPONSE_READ.findall(plain[2].lower())
        if len(found) == 1 and found[0][0] == b"content-length":
            length = found[0][1].strip()
            if length.isdigit() and length.isascii():
                status = plain[1]
                return ResponseHead(int(status[:3]), status, int(length), verbatim=True)
    return _parse_response_lines(head)


def _parse_response_lines(head: bytes) -> ResponseHead:
    """L{parse_response}, line by line: any head."""
    if not _clean(head):
        raise ValueError("malformed HTTP response")
    lines = head.split(b"\r\n")
    status_line = lines[0]
    version, _, status = status_line.partition(b" ")
    code = status[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not code.isdigit()
        or not code.isascii()
        or status[3:4] not in (b"", b" ")
    ):
        raise ValueError(f"malformed HTTP status line {status_line[:80]!r}")
    response = ResponseHead()
    response.code = int(code)
    response.status = status
    response.keep_alive = version == b"HTTP/1.1"
    forward: list[bytes] = []
    drop: set[bytes] | None = None
    for entry in lines[1:]:
        name, colon, value = entry.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):
            raise ValueError(f"malformed HTTP header {entry[:80]!r}")
        lower = name.lower()
        if lower not in _RESPONSE_OWN:
            forward.append(entry)
        elif lower == b"content-length":
            response.length = _length(response.length, value.strip())
        elif lower == b"transfer-encoding":
            response.chunked = _tokens(value)[-1] == b"chunked"
            if not response.chunked:
                raise ValueError("unsupported transfer encoding")
        elif lower == b"connection":
            response.keep_alive, _, named = _connection(value, response.keep_alive)
            if named:
                drop = (drop or set()) | named
    if response.chunked:
        response.length = None
    if drop:
        forward = [e for e in forward if e.partition(b":")[0].lower() not in drop]
    response.headers = b"".join([b"\r\n" + e for e in forward])
    return response


def send(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to the socket when it is a TCP
    connection with nothing waiting, else through its buffer.

    Twisted's C{write} always waits for the next reactor turn (two epoll
    updates and a turn per write); a proxy writes twice per request.  The
    private attributes read here are held to the installed Twisted by
    ``tests/test_ingress_proxy.py``.
    """
    if (
        type(transport) in _TCP
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


_TCP = (tcp.Server, tcp.Client)
