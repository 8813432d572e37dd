"""
The first step of joining: download the cluster CA from ``/cacerts`` and
trust it only if it matches the CA hash in the join token.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse

from k3stw.logs import Logger
from k3stw.pki.tls import PinnedCAPolicy, UnverifiedPolicy
from k3stw.pki.token import Token, ca_hash

#: k3s's client timeout for supervisor requests.
REQUEST_TIMEOUT = 10.0

_log = Logger()

#: GETs a URL, verifying the server with a policy; fires with the body of a 2xx answer.
Fetch = Callable[[str, IPolicyForHTTPS], Deferred[bytes]]


class HTTPStatusError(Exception):
    """A non-2xx answer, worded as k3s words it: ``<url>: <code> <phrase>``."""

    def __init__(self, url: str, code: int, phrase: bytes) -> None:
        super().__init__(f"{url}: {code} {phrase.decode('latin-1')}")
        self.url = url
        self.code = code


class CAHashMismatch(Exception):
    """The server's CA is not the one the token names: never retried."""

    def __init__(self, token_hash: str, server_hash: str) -> None:
        super().__init__(
            "token CA hash does not match the Cluster CA certificate hash: "
            f"{token_hash} != {server_hash}"
        )


class _QuietHTTPClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" line per request would drown the agent's log.
    noisy = False


def https_fetcher(reactor: IReactorTime) -> Fetch:
    """Real HTTPS GETs: one connection per request, as k3s disables keep-alive."""

    def fetch(url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        pool._factory = _QuietHTTPClientFactory
        agent = Agent(reactor, contextFactory=policy, connectTimeout=REQUEST_TIMEOUT, pool=pool)
        return Deferred.fromCoroutine(_get(reactor, agent, url))

    return fetch


async def _get(reactor: IReactorTime, agent: IAgent, url: str) -> bytes:
    """GET C{url}; the body of a 2xx answer, else L{HTTPStatusError}."""
    requested: Deferred[IResponse] = agent.request(b"GET", url.encode("ascii"))
    requested.addTimeout(REQUEST_TIMEOUT, reactor)
    response = await requested
    body: Deferred[bytes] = readBody(response)
    body.addTimeout(REQUEST_TIMEOUT, reactor)
    data = await body
    if not 200 <= response.code < 300:
        raise HTTPStatusError(url, response.code, response.phrase)
    return data


async def fetch_cluster_ca(fetch: Fetch, server_url: str, token: Token) -> bytes:
    """
    The cluster CA bundle of C{server_url}, verified as k3s verifies it.

    Downloaded once without verification, checked against the token's CA
    hash, then fetched again over TLS verified with that very bundle, so the
    server proves it holds a key the CA signed.

    :raises CAHashMismatch: the token was made for another CA.
    :raises Exception: any network or HTTP failure, worth retrying.
    """
    url = server_url + "/cacerts"
    bundle = await fetch(url, UnverifiedPolicy())
    try:
        server_hash = ca_hash(bundle)
    except ValueError as e:
        raise ValueError(f"failed to get CA certs: {url} did not return a CA bundle: {e}") from None
    if token.ca_hash:
        if token.ca_hash != server_hash:
            raise CAHashMismatch(token.ca_hash, server_hash)
    else:
        _log.warn(
            "Cluster CA certificate is not trusted by the host CA bundle, but the token does "
            "not include a CA hash. Use the full token from the server's node-token file to "
            "enable Cluster CA validation."
        )
    try:
        await fetch(url, PinnedCAPolicy(bundle))
    except HTTPStatusError:
        raise
    except Exception as e:
        raise ValueError(f"CA cert validation failed: {e}") from e
    return bundle
