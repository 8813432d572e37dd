"""What the ``k3s`` commands share: k3s's usage errors, its common flags, the supervisor."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from k3stw.tap.options import default_data_dir

DEFAULT_SERVER = "https://127.0.0.1:6443"


class CommandParser(argparse.ArgumentParser):
    """argparse with urfave/cli's words for a bad command line (``Incorrect Usage: ...``)."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            first = message[len(prefix) :].split()[0]
            if first.startswith("-"):
                message = f"flag provided but not defined: -{first.lstrip('-').split('=')[0]}"
            else:
                message = f"unexpected argument {first!r}"
        print(f"Incorrect Usage: {message}\n", file=sys.stderr)
        self.print_help(sys.stderr)
        sys.exit(1)


class CommandError(Exception):
    """A command that failed; its message is what k3s prints."""


def fail(error: CommandError | OSError | http.client.HTTPException) -> int:
    """Print a failure as k3s's logger does at the end of a command; exit status 1."""
    print(f"FATA[0000] {error}", file=sys.stderr)
    return 1


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        "-d",
        default=os.environ.get("K3S_DATA_DIR") or default_data_dir(),
        help="(data) Folder to hold state (default: /var/lib/rancher/k3s or ${HOME}/.rancher/k3s "
        "if not root)",
    )


def add_server_flags(parser: argparse.ArgumentParser, token_flag: str = "--token") -> None:
    """``--server/-s`` and the server token flag (``--token/-t``), as k3s's commands name them."""
    parser.add_argument(
        "--server",
        "-s",
        default=os.environ.get("K3S_URL") or DEFAULT_SERVER,
        help="(cluster) Server to connect to (default: https://127.0.0.1:6443) [$K3S_URL]",
    )
    parser.add_argument(
        token_flag,
        "-t",
        dest="token",
        default=os.environ.get("K3S_TOKEN"),
        help="(cluster) Shared secret used to join a server or agent to a cluster (default: "
        "<data-dir>/server/token) [$K3S_TOKEN]",
    )


def server_request(
    arguments: argparse.Namespace,
    method: str,
    path: str,
    body: object = None,
    timeout: float = 120.0,
) -> tuple[int, bytes]:
    """
    One request to a server's supervisor as ``server`` (the server token's
    password, from ``--token`` or ``<data-dir>/server/token``), trusting the
    server CA under the data dir.  Blocking.
    """
    server_dir = Path(arguments.data_dir) / "server"
    try:
        token = arguments.token or (server_dir / "token").read_text().strip()
    except OSError as e:
        raise CommandError(f"failed to read the server token: {e}") from None
    password = token.rpartition(":")[2]
    context = ssl.create_default_context(cafile=str(server_dir / "tls" / "server-ca.crt"))
    url = urlsplit(arguments.server)
    connection = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port or 6443, context=context, timeout=timeout
    )
    auth = base64.b64encode(f"server:{password}".encode()).decode()
    payload = b"" if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    try:
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def server_error(command: str, status: int, body: bytes) -> CommandError:
    """A supervisor's refusal, as k3s's commands report one."""
    try:
        answer: Any = json.loads(body)
        message = answer.get("message") if isinstance(answer, dict) else None
    except ValueError:
        message = None
    message = message or body.decode(errors="replace").strip()
    return CommandError(f"{command}: {message} (HTTP {status}), see server log for details")
