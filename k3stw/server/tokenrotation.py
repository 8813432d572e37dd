"""
``PUT /v1-k3s/token`` (``{"newToken": ...}``), which ``k3s token rotate``
calls as ``server``: the server token becomes the new one, as k3s rotates
it.  ``server/token`` and ``cred/passwd`` are rewritten (the agent password
too when it was the server token's, as without ``--agent-token``), the
cluster's bootstrap data in the datastore is re-sealed under the new token
and the old copy deleted, and this server accepts the new token at once.
Every other server and agent must be restarted with the new token; a
snapshot taken before needs the old one.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path

from twisted.web.iweb import IRequest

from k3stw.apiserver.status import StatusError
from k3stw.datastore.interface import IDatastore
from k3stw.logs import Logger
from k3stw.pki.store import ServerLayout, write_token_files
from k3stw.pki.token import InvalidToken, Token, parse_token
from k3stw.server import bootstrapdata
from k3stw.supervisor.nodes import require_server
from k3stw.supervisor.resource import Route, json_object

_log = Logger(namespace="k3stw.server.tokenrotation")


async def rotate_token(
    server_dir: Path,
    ca_hash: str,
    passwords: MutableMapping[str, str],
    datastore: IDatastore,
    new_token: str,
) -> None:
    """
    Make C{new_token} the server token.

    :raises StatusError: 400 for a token that cannot be used.
    """
    try:
        new = parse_token(new_token)
    except InvalidToken as e:
        raise StatusError(400, str(e)) from None
    if new.ca_hash and new.ca_hash != ca_hash:
        raise StatusError(
            400,
            f"token CA hash does not match the Cluster CA certificate hash: "
            f"{new.ca_hash} != {ca_hash}",
        )
    if new.is_bootstrap:
        raise StatusError(400, "a bootstrap token cannot be the server token")
    old = passwords["server"]
    agent = new.password if passwords["node"] == old else passwords["node"]
    write_token_files(ServerLayout(server_dir), Token(ca_hash, "server", new.password), agent)
    stored = await datastore.get(bootstrapdata.storage_key(old))
    if stored is not None:
        document = json.loads(bootstrapdata.decrypt(old, stored.value))
        sealed = bootstrapdata.encrypt(
            new.password, json.dumps(bootstrapdata.document(server_dir, document)).encode()
        )
        await datastore.create(bootstrapdata.storage_key(new.password), sealed)
        await datastore.delete(stored.key, stored.mod_revision)
    passwords["server"], passwords["node"] = new.password, agent
    _log.info("Server token rotated; restart servers and agents with the new token")


def token_route(
    server_dir: Path, ca_hash: str, passwords: MutableMapping[str, str], datastore: IDatastore
) -> Route:
    """``/v1-k3s/token``, for the server token's holders."""

    async def put(request: IRequest) -> bytes:
        require_server(request, passwords)
        new_token = json_object(request).get("newToken")
        if not isinstance(new_token, str) or not new_token:
            raise StatusError(400, "newToken: Required value")
        await rotate_token(server_dir, ca_hash, passwords, datastore, new_token)
        return b""

    return Route(PUT=put)
