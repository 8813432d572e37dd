"""
The supervisor's endpoints for servers joining over embedded etcd:
``/db/info`` (the member list, from localhost or a ``k3s:server`` caller)
and ``/v1-k3s/server-bootstrap`` (the cluster's shared files, for
``k3s:server`` callers), as k3s serves them; and ``POST /db/snapshot``,
which ``k3s etcd-snapshot`` calls as ``k3s:server``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from k3stw.apiserver.status import StatusError
from k3stw.datastore.interface import DatastoreUnavailable
from k3stw.logs import Logger
from k3stw.server import bootstrapdata
from k3stw.supervisor.nodes import require_server
from k3stw.supervisor.resource import Route, json_object

if TYPE_CHECKING:
    from k3stw.etcd.member import EmbeddedEtcd
    from k3stw.etcd.snapshots import EtcdSnapshots

_log = Logger(namespace="k3stw.etcd")


def _require_server(request: IRequest, passwords: Mapping[str, str], local_ok: bool) -> None:
    if local_ok:
        client = request.getClientAddress()
        if isinstance(client, IPv4Address | IPv6Address) and client.host in ("127.0.0.1", "::1"):
            return
    require_server(request, passwords)


def server_bootstrap(
    server_dir: Path, etcd: EmbeddedEtcd | None, passwords: Mapping[str, str]
) -> Route:
    """
    ``/v1-k3s/server-bootstrap``: the shared files, from the datastore on
    embedded etcd (opened with the token the caller proved), else from disk.
    """

    async def get(request: IRequest) -> bytes:
        _require_server(request, passwords, local_ok=False)
        client = str(getattr(request.getClientAddress(), "host", ""))
        document = None
        if etcd is not None:
            try:
                document = await etcd.bootstrap_data(passwords["server"])
            except DatastoreUnavailable as e:
                _log.warn(
                    "Failed to read bootstrap data from datastore, serving from disk: {error}",
                    error=str(e),
                )
        if document is not None:
            _log.info("Serving HTTP bootstrap from datastore for {client}", client=client)
        else:
            _log.info("Serving HTTP bootstrap from disk for {client}", client=client)
            document = bootstrapdata.document(server_dir)
        return json.dumps(document).encode()

    return Route(b"application/json", GET=get)


def db_info(etcd: EmbeddedEtcd, passwords: Mapping[str, str]) -> Route:
    """``/db/info``: etcd's member list, ``{"members": [...]}``."""

    async def get(request: IRequest) -> bytes:
        _require_server(request, passwords, local_ok=True)
        try:
            members = await etcd.members()
        except DatastoreUnavailable:
            raise StatusError(500, "failed to get etcd MemberList") from None
        return json.dumps({"members": members}).encode()

    return Route(b"application/json", GET=get)


def db_snapshot(snapshots: EtcdSnapshots, passwords: Mapping[str, str]) -> Route:
    """``/db/snapshot``: one ``k3s etcd-snapshot`` operation, its JSON answer."""

    async def post(request: IRequest) -> bytes:
        _require_server(request, passwords, local_ok=False)
        body = json_object(request)
        try:
            answer = await snapshots.operate(body)
        except ValueError as e:
            raise StatusError(400, str(e)) from None
        except Exception as e:
            operation = body.get("operation")
            _log.error("etcd-snapshot {operation} failed: {error}", operation=operation, error=e)
            raise StatusError(500, f"etcd-snapshot {operation} failed: {e}") from None
        return json.dumps(answer).encode()

    return Route(b"application/json", POST=post)


def add_routes(
    root: Resource, server_dir: Path, etcd: EmbeddedEtcd | None, passwords: Mapping[str, str]
) -> None:
    """Put the endpoints in the supervisor's tree (``/db/info`` only on embedded etcd)."""
    v1 = root.children[b"v1-k3s"]
    v1.putChild(b"server-bootstrap", server_bootstrap(server_dir, etcd, passwords))
    if etcd is not None:
        db = Route()
        db.putChild(b"info", db_info(etcd, passwords))
        if etcd.snapshots is not None:
            db.putChild(b"snapshot", db_snapshot(etcd.snapshots, passwords))
        root.putChild(b"db", db)
