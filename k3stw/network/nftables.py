"""
nftables as kube-proxy's nftables mode drives it: one ``nft -f`` transaction
per sync (the kernel applies all of it or none), on the tables it owns.  The
command is the distribution's ``nft`` (Debian ``nftables``), run through
L{run_command}.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    async def listing(self, what: str, family: str = "ip") -> str:
        """``nft -t list <what> <family>`` (C{what}: ``chains`` or ``sets``; no set elements)."""
        try:
            done = await run_command(
                self.reactor, (*self.prefix, "nft", "-t", "list", what, family), timeout=TIMEOUT
            )
        except CommandFailed as e:
            raise NFTablesError(str(e)) from None
        return done.stdout.decode()

    async def apply(self, text: str) -> None:
        """Run C{text} (``nft -f`` input) as one transaction."""
        try:
            await run_command(
                self.reactor, (*self.prefix, "nft", "-f", "-"), timeout=TIMEOUT, stdin=text.encode()
            )
        except CommandFailed as e:
            raise NFTablesError(str(e)) from None
