"""
``k3s secrets-encrypt`` as a command:

    python -m k3stw.server.secretsencryptcli COMMAND [--data-dir DIR] [--server URL]
        [--token TOKEN] [-o text|json] [--force] [--skip]

COMMAND is ``status``, ``enable``, ``disable``, ``prepare``, ``rotate``,
``reencrypt`` or ``rotate-keys``.  It calls a server's
``/v1-k3s/encrypt/status`` and ``/v1-k3s/encrypt/config`` as k3s's does: as
``server`` with the password of the server token (``--token``, else
``<data-dir>/server/token``), trusting ``<data-dir>/server/tls/server-ca.crt``.
Blocking and standalone: the server never imports it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from k3stw.server.secretsencrypt import (
    PREPARE,
    REENCRYPT_REQUEST,
    ROTATE,
    ROTATE_KEYS,
    status_text,
)
from k3stw.tap.options import default_data_dir

#: What each command asks for, and the line k3s prints once it is done.
COMMANDS: dict[str, tuple[dict[str, object], str]] = {
    "enable": ({"enable": True}, "secrets-encryption enabled"),
    "disable": ({"enable": False}, "secrets-encryption disabled"),
    "prepare": ({"stage": PREPARE}, "prepare completed successfully"),
    "rotate": ({"stage": ROTATE}, "rotate completed successfully"),
    "reencrypt": ({"stage": REENCRYPT_REQUEST}, "reencryption started"),
    "rotate-keys": ({"stage": ROTATE_KEYS}, "keys rotated, reencryption finished"),
}


def _request(
    arguments: argparse.Namespace, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    data_dir = Path(arguments.data_dir)
    token = arguments.token or (data_dir / "server" / "token").read_text().strip()
    password = token.rpartition(":")[2]
    context = ssl.create_default_context(cafile=str(data_dir / "server" / "tls" / "server-ca.crt"))
    url = urlsplit(arguments.server)
    connection = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port or 6443, context=context, timeout=90
    )
    auth = base64.b64encode(f"server:{password}".encode()).decode()
    try:
        connection.request(method, path, body, {"Authorization": f"Basic {auth}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _error(status: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("message") or body.decode()
    except ValueError:
        message = body.decode(errors="replace")
    return f"secrets-encrypt: {message} (HTTP {status}), see server log for details"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k3s secrets-encrypt")
    parser.add_argument("command", choices=["status", *COMMANDS])
    parser.add_argument("--data-dir", "-d", default=default_data_dir())
    parser.add_argument("--server", "-s", default="https://127.0.0.1:6443")
    parser.add_argument("--token", "-t")
    parser.add_argument("--output", "-o", choices=["text", "json"], default="text")
    parser.add_argument("--force", "-f", action="store_true")
    parser.add_argument("--skip", action="store_true")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "status":
            status, body = _request(arguments, "GET", "/v1-k3s/encrypt/status")
            if status == 404:
                # A server without --secrets-encryption serves no stages.
                print(status_text(None), end="")
                return 0
            if status != 200:
                print(_error(status, body), file=sys.stderr)
                return 1
            text = body.decode() + "\n" if arguments.output == "json" else None
            print(text or status_text(json.loads(body)), end="")
            return 0
        request, done = COMMANDS[arguments.command]
        document = {**request, "force": arguments.force, "skip": arguments.skip}
        body = json.dumps(document).encode()
        status, body = _request(arguments, "PUT", "/v1-k3s/encrypt/config", body)
    except (OSError, http.client.HTTPException) as e:
        print(f"secrets-encrypt: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(_error(status, body), file=sys.stderr)
        return 1
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
