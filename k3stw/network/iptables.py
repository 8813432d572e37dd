"""
iptables as the node's network components drive it: whole tables of their
own chains written in one ``iptables-restore --noflush`` transaction (the
kernel sees all of a sync or none of it), and the few jump rules into the
built-in chains checked and added one at a time, so that rules other
programs own are never flushed.

The commands are the distribution's (``iptables``, ``ip6tables``; with the
nf_tables backend on Debian), run through L{run_command}.

A table of many chains (kube-proxy's full sync of 1,000 Services declares
11,000) costs iptables-nft 1.8's ``--noflush`` restore seconds: it notes each
chain a line names in a sorted linked list (``cache_chain_list_insert``, a
scan per line) and then fetches those chains one request each.  A command
that names no chain makes it fetch all of the table's chains in one dump
instead and skip the list, and the only such command that changes nothing is
a listing: so such a table's block starts with ``-S`` (the output, the table
as it was, is dropped).  5.8 s become 0.9 s for kube-proxy's 11,000 chains;
iptables-legacy just prints the listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from k3stw.machinery.processes import CommandFailed, run_command

__all__ = ["IPTables", "IPTablesError", "fetch_all_chains", "restore_text"]

#: Seconds a command may wait for the xtables lock (``-w``) before failing.
LOCK_WAIT = 5
#: Seconds before a command is killed.
TIMEOUT = 30.0
#: A table's block declaring this many chains is restored with all its chains fetched at once.
MANY_CHAINS = 500


class IPTablesError(Exception):
    """An iptables command failed; the message is one line naming the command and its error."""


def restore_text(tables: Mapping[str, tuple[Iterable[str], Iterable[str]]]) -> str:
    """
    ``iptables-restore`` input: for each table, its chains declared
    (``:NAME - [0:0]``, which with ``--noflush`` empties just those chains)
    and then its rules (``-A NAME ...``), each table ending in ``COMMIT``.

    :param tables: table name -> (chains, rules).
    """
    lines: list[str] = []
    for table, (chains, rules) in tables.items():
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain in chains]
        lines += rules
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def fetch_all_chains(text: str) -> str:
    """
    C{text} (restore input) with ``-S`` heading each table's block that
    declares C{MANY_CHAINS} chains or more (see the module docstring).
    """
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("*")]
    for start in reversed(heads):
        declared = 0
        for line in lines[start + 1 :]:
            if line == "COMMIT":
                break
            declared += line.startswith(":")
        if declared >= MANY_CHAINS:
            lines.insert(start + 1, "-S")
    return "\n".join(lines)


class IPTables:
    """
    One address family's iptables.

    :param reactor: spawns the commands.
    :param family: 4 (``iptables``) or 6 (``ip6tables``).
    :param prefix: a command each one runs under (``ip netns exec NAME`` in
        tests and benchmarks); none on a node.
    """

    def __init__(self, reactor: Any, family: int = 4, prefix: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.family = family
        self.command = "iptables" if family == 4 else "ip6tables"
        self.prefix = tuple(prefix)

    async def _call(self, argv: Sequence[str], stdin: bytes | None = None) -> bytes:
        try:
            done = await run_command(
                self.reactor, (*self.prefix, *argv), timeout=TIMEOUT, stdin=stdin
            )
        except CommandFailed as e:
            raise IPTablesError(str(e)) from None
        return done.stdout

    async def _run(self, *args: str) -> bytes:
        return await self._call((self.command, "-w", str(LOCK_WAIT), *args))

    async def restore(self, text: str) -> None:
        """Apply C{text} (see L{restore_text}) as one transaction, flushing only its chains."""
        argv = (f"{self.command}-restore", "-w", str(LOCK_WAIT), "--noflush")
        await self._call(argv, stdin=fetch_all_chains(text).encode())

    async def save(self, table: str) -> str:
        """The table as ``iptables-save`` prints it."""
        return (await self._call((f"{self.command}-save", "-t", table))).decode()

    async def has_rule(self, table: str, chain: str, rule: Sequence[str]) -> bool:
        """Whether C{chain} holds C{rule} (``-C``)."""
        try:
            await self._run("-t", table, "-C", chain, *rule)
        except IPTablesError:
            return False
        return True

    async def ensure_chain(self, table: str, chain: str) -> None:
        """Create C{chain} unless it exists (without touching its rules)."""
        try:
            await self._run("-t", table, "-N", chain)
        except IPTablesError:
            # It exists already, or the table is unusable: listing it tells which.
            await self._run("-t", table, "-S", chain)

    async def ensure_rule(
        self, table: str, chain: str, rule: Sequence[str], first: bool = True
    ) -> bool:
        """
        Add C{rule} to C{chain} unless it is there: first in the chain
        (C{first}) or last.  Whether it had to be added.
        """
        if await self.has_rule(table, chain, rule):
            return False
        await self._run("-t", table, "-I" if first else "-A", chain, *rule)
        return True

    async def delete_rule(self, table: str, chain: str, rule: Sequence[str]) -> None:
        """Remove C{rule} from C{chain}, if it is there."""
        if await self.has_rule(table, chain, rule):
            await self._run("-t", table, "-D", chain, *rule)

    async def remove_chains(self, table: str, chains: Iterable[str]) -> None:
        """Empty and delete C{chains} (those that exist), in one transaction."""
        present = set(await self.chains(table))
        doomed = [chain for chain in chains if chain in present]
        if not doomed:
            return
        text = restore_text({table: (doomed, [f"-X {chain}" for chain in doomed])})
        await self.restore(text)

    async def chains(self, table: str) -> list[str]:
        """The names of the chains of C{table}."""
        return [
            line[1:].split(" ", 1)[0]
            for line in (await self.save(table)).splitlines()
            if line.startswith(":")
        ]
