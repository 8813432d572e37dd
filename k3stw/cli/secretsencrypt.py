"""
``k3s secrets-encrypt status|enable|disable|prepare|rotate|reencrypt|rotate-keys``:
calls a server's ``/v1-k3s/encrypt/status`` and ``/v1-k3s/encrypt/config``
as k3s's does (as ``server``, with the server token), and prints k3s's lines.
"""

from __future__ import annotations

import http.client
import json

from k3stw.cli.common import (
    CommandError,
    CommandParser,
    add_data_dir,
    add_server_flags,
    fail,
    server_error,
    server_request,
)
from k3stw.server.secretsencrypt import (
    PREPARE,
    REENCRYPT_REQUEST,
    ROTATE,
    ROTATE_KEYS,
    status_text,
)

#: What each command asks for, and the line k3s prints once it is done.
COMMANDS: dict[str, tuple[dict[str, object], str]] = {
    "enable": ({"enable": True}, "secrets-encryption enabled"),
    "disable": ({"enable": False}, "secrets-encryption disabled"),
    "prepare": ({"stage": PREPARE}, "prepare completed successfully"),
    "rotate": ({"stage": ROTATE}, "rotate completed successfully"),
    "reencrypt": ({"stage": REENCRYPT_REQUEST}, "reencryption started"),
    "rotate-keys": ({"stage": ROTATE_KEYS}, "keys rotated, reencryption finished"),
}
_HELP = {
    "status": "Print current status of secrets encryption",
    "enable": "Enable secrets encryption",
    "disable": "Disable secrets encryption",
    "prepare": "Prepare for encryption keys rotation",
    "rotate": "Rotate secrets encryption keys",
    "reencrypt": "Reencrypt all data with new encryption key",
    "rotate-keys": "Dynamically rotates secrets encryption keys and re-encrypt secrets",
}


def parser() -> CommandParser:
    parser = CommandParser(
        prog="k3s secrets-encrypt", description="Control secrets encryption and keys rotation"
    )
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=CommandParser)
    commands.required = True
    for name, summary in _HELP.items():
        command = commands.add_parser(name, help=summary, description=summary)
        add_data_dir(command)
        add_server_flags(command)
        if name == "status":
            command.add_argument("--output", "-o", choices=["text", "json"], default="text")
        if name in ("prepare", "rotate", "reencrypt"):
            command.add_argument("--force", "-f", action="store_true", help="Force this stage.")
        if name == "reencrypt":
            command.add_argument("--skip", action="store_true", help="Skip removing old key")
    return parser


def main(argv: list[str], command: str = "secrets-encrypt") -> int:
    arguments = parser().parse_args(argv)
    try:
        if arguments.command == "status":
            status, body = server_request(arguments, "GET", "/v1-k3s/encrypt/status")
            if status == 404:
                # A server without --secrets-encryption serves no stages.
                print(status_text(None), end="")
                return 0
            if status != 200:
                raise server_error("secrets-encrypt", status, body)
            text = body.decode() + "\n" if arguments.output == "json" else None
            print(text or status_text(json.loads(body)), end="")
            return 0
        request, done = COMMANDS[arguments.command]
        force = getattr(arguments, "force", False)
        document = {**request, "force": force, "skip": getattr(arguments, "skip", False)}
        status, body = server_request(arguments, "PUT", "/v1-k3s/encrypt/config", document)
        if status != 200:
            raise server_error("secrets-encrypt", status, body)
    except (CommandError, OSError, http.client.HTTPException) as e:
        return fail(e)
    print(done)
    return 0
