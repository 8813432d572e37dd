"""
``k3s token create|list|delete|generate|rotate``.

Bootstrap tokens are kube's: Secrets ``kube-system/bootstrap-token-<id>``
of type ``bootstrap.kubernetes.io/token``, written and read through the
Kubernetes API as the admin kubeconfig's user (``--kubeconfig``,
``$KUBECONFIG``, else the one ``k3s kubectl`` uses).  An agent joins with
``K10<ca hash>::<id>.<secret>`` (what ``create`` prints) or the bare
``<id>.<secret>``.

``rotate`` changes the server token: ``PUT /v1-k3s/token`` on the server as
``server`` with the current token; the server rewrites ``server/token`` and
``cred/passwd`` and re-seals the cluster's bootstrap data under the new one.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import ssl
import string
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from k3stw.cli.common import (
    CommandError,
    CommandParser,
    add_data_dir,
    add_server_flags,
    fail,
    server_error,
    server_request,
)
from k3stw.machinery.times import parse_datetime, parse_go_duration
from k3stw.supervisor.bootstraptokens import NAMESPACE, SECRET_TYPE, secret_name

DEFAULT_GROUPS = "system:bootstrappers:k3s:default-node-token"
DEFAULT_USAGES = "signing,authentication"
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = string.ascii_lowercase + string.digits
ROTATE_WARNING = (
    "WARNING: Recommended to keep a record of the old token. If restoring from a snapshot, "
    "you must use the token associated with that snapshot."
)


def generate() -> str:
    """A new bootstrap token, ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    pick = secrets.choice
    return (
        "".join(pick(_ALPHABET) for _ in range(6))
        + "."
        + "".join(pick(_ALPHABET) for _ in range(16))
    )


def token_secret(
    token: str, description: str, groups: str, usages: str, ttl: float, now: float
) -> dict[str, Any]:
    """The Secret of a bootstrap token, as kubeadm's and k3s's ``token create`` write it."""
    match = _TOKEN.match(token)
    if match is None:
        raise CommandError(f'token {token!r} was not of the form "[a-z0-9]{{6}}.[a-z0-9]{{16}}"')
    token_id, secret = match.groups()
    data = {"token-id": token_id, "token-secret": secret}
    if description:
        data["description"] = description
    if ttl > 0:
        expires = datetime.datetime.fromtimestamp(now + ttl, datetime.UTC)
        data["expiration"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    for usage in (u.strip() for u in usages.split(",") if u.strip()):
        if usage not in ("signing", "authentication"):
            raise CommandError(
                f"invalid bootstrap token usage string: {usage}, valid usage "
                "options: signing, authentication"
            )
        data[f"usage-bootstrap-{usage}"] = "true"
    extra = [g.strip() for g in groups.split(",") if g.strip()]
    for group in extra:
        if not group.startswith("system:bootstrappers:"):
            raise CommandError(
                f'group {group!r} is invalid: it must start with "system:bootstrappers:"'
            )
    if extra:
        data["auth-extra-groups"] = ",".join(extra)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(token_id), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


class Kubernetes:
    """Blocking requests to the Kubernetes API as a kubeconfig's user."""

    def __init__(self, path: str) -> None:
        import yaml

        try:
            config = yaml.safe_load(Path(path).read_text())
            name = config.get("current-context")
            context = next(
                (c["context"] for c in config["contexts"] if c["name"] == name),
                config["contexts"][0]["context"],
            )
            cluster = next(
                c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"]
            )
            user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        except (OSError, KeyError, StopIteration, TypeError, ValueError) as e:
            raise CommandError(f"failed to read kubeconfig {path}: {e}") from None
        self.ca = base64.b64decode(cluster["certificate-authority-data"])
        url = urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 6443
        self.context = ssl.create_default_context(cadata=self.ca.decode())
        with tempfile.TemporaryDirectory() as scratch:
            pair = Path(scratch) / "client.pem"
            pair.write_bytes(
                base64.b64decode(user["client-certificate-data"])
                + base64.b64decode(user["client-key-data"])
            )
            self.context.load_cert_chain(str(pair))

    @property
    def ca_hash(self) -> str:
        """The CA hash of a secure token: SHA-256 of the CA's PEM, as k3s's."""
        return hashlib.sha256(self.ca).hexdigest()

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=30
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


def _secrets_path(name: str = "") -> str:
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
    return f"{path}/{name}" if name else path


def _decoded(secret: dict[str, Any], name: str) -> str:
    return base64.b64decode((secret.get("data") or {}).get(name) or "").decode()


def list_rows(items: list[dict[str, Any]], now: float) -> list[tuple[str, ...]]:
    """``list``'s columns for each bootstrap token Secret."""
    rows: list[tuple[str, ...]] = [
        ("TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS")
    ]
    for secret in items:
        if secret.get("type") != SECRET_TYPE:
            continue
        token_id = _decoded(secret, "token-id")
        expiration = _decoded(secret, "expiration")
        expires = parse_datetime(expiration)
        if expires is None:
            ttl, when = "<forever>", "<never>"
        else:
            left = max(0, int(expires.timestamp() - now))
            ttl, when = _short_duration(left), expiration
        data = secret.get("data") or {}
        usages = sorted(
            k.removeprefix("usage-bootstrap-")
            for k in data
            if k.startswith("usage-bootstrap-") and _decoded(secret, k) == "true"
        )
        rows.append(
            (
                token_id,
                ttl,
                when,
                ",".join(usages) or "<none>",
                _decoded(secret, "description") or "<none>",
                _decoded(secret, "auth-extra-groups") or "<none>",
            )
        )
    return rows


def _short_duration(seconds: int) -> str:
    """kubectl's short duration (``23h``, ``59m``)."""
    if seconds >= 48 * 3600:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _kubeconfig(arguments: argparse.Namespace) -> str:
    from k3stw.cli.kubectl import kubeconfig

    if arguments.kubeconfig:
        return str(arguments.kubeconfig)
    return os.environ.get("KUBECONFIG") or kubeconfig([], {}) or ""


def create(arguments: argparse.Namespace, now: float) -> str:
    kube = Kubernetes(_kubeconfig(arguments))
    token = arguments.token or generate()
    ttl = parse_go_duration(arguments.ttl) if arguments.ttl not in ("0", "") else 0.0
    secret = token_secret(
        token, arguments.description, arguments.groups, arguments.usages, ttl, now
    )
    status, answer = kube.request("POST", _secrets_path(), secret)
    if status == 409:
        raise CommandError(f"a token with id {token.split('.')[0]!r} already exists")
    if status != 201:
        raise CommandError(str(answer.get("message") or answer))
    return f"K10{kube.ca_hash}::{token}"


def delete(arguments: argparse.Namespace) -> list[str]:
    kube = Kubernetes(_kubeconfig(arguments))
    lines = []
    for given in arguments.tokens:
        token_id = given.rpartition("::")[2].split(".")[0]
        status, answer = kube.request("DELETE", _secrets_path(secret_name(token_id)))
        if status == 404:
            raise CommandError(f'bootstrap token "{token_id}" not found')
        if status != 200:
            raise CommandError(str(answer.get("message") or answer))
        lines.append(f'bootstrap token "{token_id}" deleted')
    return lines


def list_tokens(arguments: argparse.Namespace, now: float) -> str:
    kube = Kubernetes(_kubeconfig(arguments))
    status, answer = kube.request("GET", _secrets_path())
    if status != 200:
        raise CommandError(str(answer.get("message") or answer))
    items = [s for s in answer.get("items") or () if s.get("type") == SECRET_TYPE]
    if arguments.output == "json":
        return json.dumps(items, indent=2) + "\n"
    if arguments.output == "yaml":
        import yaml

        return str(yaml.safe_dump(items))
    rows = list_rows(items, now)
    widths = [max(len(r[i]) for r in rows) + 3 for i in range(5)]
    return "".join(
        "".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:5])) + row[5] + "\n"
        for row in rows
    )


def rotate(arguments: argparse.Namespace) -> None:
    new_token = arguments.new_token or secrets.token_hex(16)
    print(f"\x1b[33m{ROTATE_WARNING}\x1b[0m", file=sys.stderr)
    status, body = server_request(arguments, "PUT", "/v1-k3s/token", {"newToken": new_token})
    if status != 200:
        raise server_error("token rotate", status, body)
    print("Token rotated, restart k3s nodes with new token")


def parser() -> CommandParser:
    parser = CommandParser(prog="k3s token", description="Manage tokens")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=CommandParser)
    commands.required = True
    summaries = {
        "create": "Create bootstrap tokens on the server",
        "delete": "Delete bootstrap tokens on the server",
        "generate": "Generate and print a bootstrap token, but do not create it on the server",
        "list": "List bootstrap tokens on the server",
        "rotate": "Rotate original server token with a new server token",
    }
    for name, summary in summaries.items():
        command = commands.add_parser(name, help=summary, description=summary)
        add_data_dir(command)
        if name == "rotate":
            add_server_flags(command)
            command.add_argument("--new-token", help="New token that replaces existing token")
            continue
        command.add_argument("--kubeconfig", help="(cluster) Server to connect to [$KUBECONFIG]")
        if name == "create":
            command.add_argument("token", nargs="?", help="the token to create (default: random)")
            command.add_argument(
                "--description", default="",
                help="A human friendly description of how this token is used",
            )  # fmt: skip
            command.add_argument(
                "--groups", default=DEFAULT_GROUPS,
                help="Extra groups that this token will authenticate as when used for "
                f"authentication (default: {DEFAULT_GROUPS})",
            )  # fmt: skip
            command.add_argument(
                "--ttl", default="24h0m0s",
                help="The duration before the token is automatically deleted (e.g. 1s, 2m, "
                "3h). If set to '0', the token will never expire (default: 24h0m0s)",
            )  # fmt: skip
            command.add_argument(
                "--usages", default=DEFAULT_USAGES,
                help="Describes the ways in which this token can be used. (default: "
                f"{DEFAULT_USAGES})",
            )  # fmt: skip
        if name == "delete":
            command.add_argument("tokens", nargs="+", metavar="TOKEN")
        if name == "list":
            command.add_argument(
                "--output", "-o", default="text", choices=["text", "json", "yaml"],
                help="Output format. Valid options: text, json, yaml",
            )  # fmt: skip
    return parser


def main(argv: list[str], command: str = "token") -> int:
    import time

    arguments = parser().parse_args(argv)
    try:
        if arguments.command == "generate":
            print(generate())
        elif arguments.command == "create":
            print(create(arguments, time.time()))
        elif arguments.command == "delete":
            for line in delete(arguments):
                print(line)
        elif arguments.command == "list":
            print(list_tokens(arguments, time.time()), end="")
        else:
            rotate(arguments)
    except (CommandError, OSError, http.client.HTTPException, ValueError) as e:
        return fail(e if not isinstance(e, ValueError) else CommandError(str(e)))
    return 0
