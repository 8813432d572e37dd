"""
nftables as kube-proxy's nftables mode drives it: one ``nft -f`` transaction
per sync (the kernel applies all of it or none), on the tables it owns.  The
command is the distribution's ``nft`` (Debian ``nftables``), run through
L{run_command}.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from k3stw.machinery.processes import CommandFailed, run_command

__all__ = ["NFTables", "NFTablesError"]

#: Seconds before ``nft`` is killed.
TIMEOUT = 30.0


class NFTablesError(Exception):
    """An ``nft`` transaction failed; the message names the command and nft's error."""


class NFTables:
    """
    The ``nft`` command.

    :param reactor: spawns it.
    :param prefix: a command it runs under (``ip netns exec NAME`` in tests
        and benchmarks); none on a node.
    """

    def __init__(self, reactor: Any, prefix: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.prefix = tuple(prefix)

    async def table(self, name: str, family: str = "ip") -> str:
        """
        ``nft -t -p list table <family> <name>``: no set elements, protocol
        numbers (``-p``: names cost a read of /etc/protocols per rule); ""
        if there is none.  nft writes its listing a word per system call, so
        into a file rather than a pipe (hundreds of thousands of reads).
        """
        with tempfile.NamedTemporaryFile(prefix="k3stw-nft-") as listing:
            script = 'exec nft -t -p list table "$1" "$2" > "$3"'
            argv = (*self.prefix, "sh", "-c", script, "nft", family, name, listing.name)
            try:
                await run_command(self.reactor, argv, timeout=TIMEOUT)
            except CommandFailed as e:
                if e.exit_code == 1 and b"No such file or directory" in e.stderr:
                    return ""
                raise NFTablesError(str(e)) from None
            return Path(listing.name).read_text()

    async def apply(self, text: str) -> None:
        """Run C{text} (``nft -f`` input) as one transaction."""
        try:
            await run_command(
                self.reactor, (*self.prefix, "nft", "-f", "-"), timeout=TIMEOUT, stdin=text.encode()
            )
        except CommandFailed as e:
            raise NFTablesError(str(e)) from None
