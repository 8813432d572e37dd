"""
The first step of joining: download the cluster CA from ``/cacerts`` and
trust it only if it matches the CA hash in the join token.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IPolicyForHTTPS

from k3stw.httpclient import HTTPSClient, HTTPStatusError
from k3stw.logs import Logger
from k3stw.pki.tls import PinnedCAPolicy, UnverifiedPolicy
from k3stw.pki.token import Token, ca_hash

_log = Logger()

#: GETs a URL, verifying the server with a policy; fires with the body of a 2xx answer.
Fetch = Callable[[str, IPolicyForHTTPS], Deferred[bytes]]


class CAHashMismatch(Exception):
    """The server's CA is not the one the token names: never retried."""

    def __init__(self, token_hash: str, server_hash: str) -> None:
        super().__init__(
            "token CA hash does not match the Cluster CA certificate hash: "
            f"{token_hash} != {server_hash}"
        )


def https_fetcher(reactor: IReactorTime) -> Fetch:
    """Real HTTPS GETs: one connection per request, as k3s disables keep-alive."""

    def fetch(url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
        client = HTTPSClient(reactor, policy, persistent=False)
        return Deferred.fromCoroutine(client.fetch(url))

    return fetch


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
