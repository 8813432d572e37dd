"""
``k3s server ...`` and ``k3s agent ...``: the ``k3s-server`` and
``k3s-agent`` twistd plugins, run in this process in the foreground
(``twistd --nodaemon --pidfile=``), so that SIGTERM reaches the same
reactor and graceful stop as under systemd's ``twistd -n``.
"""

from __future__ import annotations

import sys

PLUGINS = {"server": "k3s-server", "agent": "k3s-agent"}


def twistd_argv(command: str, argv: list[str]) -> list[str]:
    """The twistd command line that runs C{command}'s plugin with C{argv}."""
    return ["twistd", "--nodaemon", "--pidfile=", PLUGINS[command], *argv]


def main(argv: list[str], command: str = "server") -> int:
    from twisted.scripts.twistd import run

    sys.argv = twistd_argv(command, argv)
    run()
    return 0
