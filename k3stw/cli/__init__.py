"""
The ``k3s`` command: what k3s users type besides ``twistd k3s-server``.

``k3s <command> ...`` hands the rest of the line to the command's module
(each has a ``main(argv) -> int``): ``server`` and ``agent`` run the twistd
plugins in this process, ``kubectl`` runs the real kubectl with the admin
kubeconfig, and ``etcd-snapshot``, ``token``, ``certificate``,
``secrets-encrypt`` and ``check-config`` are k3s's own.  Run as
``kubectl`` (a link named so), it is kubectl, as k3s's multicall binary is.
"""

from __future__ import annotations

import importlib
import os
import sys

#: Each command, its module and the one line ``k3s --help`` shows for it.
COMMANDS = {
    "server": ("k3stw.cli.daemon", "Run management server"),
    "agent": ("k3stw.cli.daemon", "Run node agent"),
    "kubectl": ("k3stw.cli.kubectl", "Run kubectl"),
    "check-config": ("k3stw.cli.checkconfig", "Run config check"),
    "token": ("k3stw.cli.token", "Manage tokens"),
    "etcd-snapshot": ("k3stw.cli.etcdsnapshot", "Manage etcd snapshots"),
    "secrets-encrypt": ("k3stw.cli.secretsencrypt", "Control secrets encryption and keys rotation"),
    "certificate": ("k3stw.cli.certificate", "Manage K3s certificates"),
}


def usage() -> str:
    from k3stw import __version__

    lines = [
        "NAME:",
        "   k3s - Kubernetes, but small and simple (k3stw: on Twisted)",
        "",
        "USAGE:",
        "   k3s [global options] command [command options] [arguments...]",
        "",
        "VERSION:",
        f"   v{__version__} (k3stw)",
        "",
        "COMMANDS:",
    ]
    lines += [f"   {name:<16}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        "GLOBAL OPTIONS:",
        "   --help, -h     show help",
        "   --version, -v  print the version",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run C{argv} (by default the process's) as k3s's command line; the exit status."""
    argv = sys.argv if argv is None else argv
    if os.path.basename(argv[0]) == "kubectl":
        from k3stw.cli import kubectl

        return kubectl.main(argv[1:])
    arguments = argv[1:]
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    first = arguments[0]
    if first in ("-v", "--version"):
        from k3stw import __version__

        print(f"k3s version v{__version__} (k3stw)")
        return 0
    if first.startswith("-"):
        # urfave/cli's words for a global flag it does not know.
        flag = first.lstrip("-").split("=")[0]
        print(f"Incorrect Usage: flag provided but not defined: -{flag}", file=sys.stderr)
        print(usage(), end="", file=sys.stderr)
        return 1
    entry = COMMANDS.get(first)
    if entry is None:
        print(f"No help topic for '{first}'", file=sys.stderr)
        return 3
    module = importlib.import_module(entry[0])
    status: int = module.main(arguments[1:], command=first)
    return status
