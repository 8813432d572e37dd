"""
``k3s etcd-snapshot save|ls|list|l|delete|prune``: as k3s's, the command
does not touch etcd itself: it POSTs the operation to the server's
``/db/snapshot`` as ``server`` (``--etcd-token``, default the server token
file) and prints k3s's lines.  ``save`` never prunes (k3s's CLI saves with
retention 0); ``prune`` keeps the newest ``--etcd-snapshot-retention`` of
``--name``'s snapshots.  S3 flags are not supported (k3stw keeps snapshots
on the server's disk only).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any

from k3stw.cli.common import (
    CommandError,
    CommandParser,
    add_data_dir,
    fail,
    server_error,
    server_request,
)

OUTPUTS = ("table", "json", "yaml")
_HELP = {
    "save": "Trigger an immediate etcd snapshot",
    "delete": "Delete given snapshot(s)",
    "ls": "List snapshots",
    "prune": "Remove snapshots that match the name prefix that exceed the configured "
    "retention count",
}
ALIASES = {"ls": ["list", "l"]}


def parser() -> CommandParser:
    import os

    parser = CommandParser(prog="k3s etcd-snapshot", description="Manage etcd snapshots")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=CommandParser)
    commands.required = True
    for name, summary in _HELP.items():
        command = commands.add_parser(
            name, help=summary, description=summary, aliases=ALIASES.get(name, [])
        )
        command.set_defaults(operation=name)
        add_data_dir(command)
        command.add_argument(
            "--etcd-server", "-s", default=os.environ.get("K3S_URL") or "https://127.0.0.1:6443",
            dest="server", help="(db) Remote etcd server to connect to (default: "
            "https://127.0.0.1:6443) [$K3S_URL]",
        )  # fmt: skip
        command.add_argument(
            "--etcd-token", "-t", dest="token", default=os.environ.get("K3S_TOKEN"),
            help="(db) Token to use for authentication (default: <data-dir>/server/token) "
            "[$K3S_TOKEN]",
        )  # fmt: skip
        command.add_argument("--node-name", help="(agent/node) Node name [$K3S_NODE_NAME]")
        command.add_argument(
            "--dir", "--etcd-snapshot-dir", dest="dir",
            help="(db) Directory to save etcd on-demand snapshot. (default: "
            "${data-dir}/db/snapshots)",
        )  # fmt: skip
        command.add_argument(
            "--name", default="on-demand",
            help="(db) Set the base name of the etcd on-demand snapshot, appended with UNIX "
            "timestamp (default: on-demand)",
        )  # fmt: skip
        command.add_argument(
            "--snapshot-compress", "--etcd-snapshot-compress", dest="compress",
            action="store_true", default=None, help="(db) Compress etcd snapshot",
        )  # fmt: skip
        command.add_argument(
            "--snapshot-retention", "--etcd-snapshot-retention", dest="retention", type=int,
            help="(db) Number of snapshots to retain. (default: 5)",
        )  # fmt: skip
        if name == "ls":
            command.add_argument(
                "--output", "-o", default="table", help="(db) List format. Default: standard. "
                "Optional: json"
            )  # fmt: skip
        if name == "delete":
            command.add_argument("snapshots", nargs="*", metavar="NAME")
    return parser


def request_body(arguments: argparse.Namespace) -> dict[str, Any]:
    """k3s's request: dir, compress and retention only when given on the command line."""
    operation = "list" if arguments.operation == "ls" else arguments.operation
    names = arguments.snapshots if operation == "delete" else [arguments.name]
    body: dict[str, Any] = {"operation": operation, "name": names}
    if arguments.dir:
        body["dir"] = arguments.dir
    if arguments.compress is not None:
        body["compress"] = arguments.compress
    if operation == "prune":
        body["retention"] = 5 if arguments.retention is None else arguments.retention
    elif arguments.retention is not None:
        body["retention"] = arguments.retention
    return body


def table(listed: dict[str, Any]) -> str:
    """``ls``'s table: ``Name Location Size Created``, oldest first, tabwriter with one space."""
    items = sorted(
        listed.get("items") or (),
        key=lambda i: (i.get("status", {}).get("creationTime", ""), i["spec"]["snapshotName"]),
    )
    rows = [("Name", "Location", "Size", "Created")]
    for item in items:
        status = item.get("status") or {}
        spec = item["spec"]
        rows.append(
            (
                spec["snapshotName"],
                spec["location"],
                str(status.get("size", "")),
                status.get("creationTime", ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) + 1 for i in range(3)]
    return "".join(f"{a:<{widths[0]}}{b:<{widths[1]}}{c:<{widths[2]}}{d}\n" for a, b, c, d in rows)


def main(argv: list[str], command: str = "etcd-snapshot") -> int:
    arguments = parser().parse_args(argv)
    body = request_body(arguments)
    operation = body["operation"]
    if operation == "delete" and not body["name"]:
        return fail(CommandError("no snapshots given for removal"))
    output = getattr(arguments, "output", "table")
    if output not in OUTPUTS:
        return fail(CommandError(f"invalid output format: {output}"))
    try:
        status, answer = server_request(arguments, "POST", "/db/snapshot", body)
        if status != 200:
            raise server_error(f"etcd-snapshot {operation}", status, answer)
    except (CommandError, OSError, http.client.HTTPException) as e:
        return fail(e)
    result = json.loads(answer)
    if operation == "list":
        if output == "json":
            print(json.dumps(result, indent=2))
        elif output == "yaml":
            import yaml

            print(yaml.safe_dump(result), end="")
        else:
            print(table(result), end="")
        return 0
    for name in result.get("created") or ():
        print(f"Snapshot {name} saved.")
    deleted = result.get("deleted") or []
    for name in deleted:
        print(f"Snapshot {name} deleted.")
    if operation == "delete":
        for name in body["name"]:
            if name not in deleted:
                print(f"WARN[0000] Snapshot {name} not found.", file=sys.stderr)
    return 0
