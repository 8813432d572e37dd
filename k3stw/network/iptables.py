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

A full sync need not write what the kernel holds already: given the tables
as ``iptables-save`` prints them, L{unchanged_chains_dropped} leaves out of
the restore input each chain whose rules are those it would write.  The
comparison brings the input's rules to iptables-save's form (option order,
``/32``, hex marks, MARK as ``--set-xmark``, statistic's rounding) for the
forms kube's rules take; a rule in another form compares unequal, and its
chain is written again, so correctness never depends on that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from k3stw.machinery.processes import MAX_OUTPUT, CommandFailed, run_command

__all__ = [
    "IPTables",
    "IPTablesError",
    "canonical_rule",
    "fetch_all_chains",
    "restore_text",
    "saved_chains",
    "unchanged_chains_dropped",
]

#: Seconds a command may wait for the xtables lock (``-w``) before failing.
LOCK_WAIT = 5
#: Seconds before a command is killed.
TIMEOUT = 30.0
#: The most of a listing kept (kube-proxy's nat table of 1,000 Services x 10 endpoints: 3.3 MB).
LISTING_MAX = 256 * 1024 * 1024
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


#: A word of a rule: a quoted string (its quotes dropped) or a run of non-spaces.
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
#: The IP header's options, at the place iptables-save prints them (before any match).
_HEADER = {
    "-s": 0, "--source": 0, "--src": 0,
    "-d": 1, "--destination": 1, "--dst": 1,
    "-i": 2, "--in-interface": 2,
    "-o": 3, "--out-interface": 3,
    "-p": 4, "--protocol": 4,
}  # fmt: skip
_SHORT = ("-s", "-d", "-i", "-o", "-p")
#: MARK's shorthands, which iptables-save prints as ``--set-xmark value/mask``.
_MARKS: dict[str, Callable[[str], str]] = {
    "--or-mark": lambda v: f"{v}/{v}",
    "--xor-mark": lambda v: f"{v}/0x0",
    "--set-mark": lambda v: v if "/" in v else f"{v}/0xffffffff",
}


def _words(rule: str) -> list[str]:
    if '"' not in rule:
        return rule.split()
    return [quoted if bare == "" else bare for quoted, bare in _WORD.findall(rule)]


def _hex(value: str) -> str:
    try:
        return "/".join(hex(int(part, 16)) for part in value.split("/"))
    except ValueError:
        return value


#: What iptables-save prints unquoted (``xtables_save_string``).
_BARE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _saved_string(value: str) -> str:
    if value and _BARE.issuperset(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


@lru_cache(maxsize=64)
def _probability(value: str) -> str:
    # xt_statistic keeps a 31-bit fraction, printed with 11 decimals.
    return f"{int(float(value) * 0x80000000 + 0.5) / 0x80000000:.11f}"


def canonical_rule(rule: str) -> str:
    """
    C{rule} (``-A CHAIN ...``, as restore input) as iptables-save prints
    it, for the forms kube's rules take (see the module docstring); other
    forms may keep theirs.
    """
    words = _words(rule)
    header = ["", "", "", "", ""]
    body = words[:2]
    negated = False
    index, count = 2, len(words)
    while index < count:
        word = words[index]
        index += 1
        if word == "!":
            negated = True
            continue
        slot = _HEADER.get(word)
        if slot is not None and index < count:
            value = words[index]
            index += 1
            if slot < 2 and "/" not in value:
                value += "/32"
            header[slot] = f"{'! ' if negated else ''}{_SHORT[slot]} {value}"
        else:
            if negated:
                body.append("!")
            if index < count and word in _VALUED:
                value = words[index]
                index += 1
                if word in _MARKS:
                    body += ("--set-xmark", _hex(_MARKS[word](value)))
                else:
                    body += (word, _VALUED[word](value))
            else:
                body.append(word)
        negated = False
    if "recent" in body:
        body = _recent(body)
    if body[-2:] == ["-j", "REJECT"]:
        body += ("--reject-with", "icmp-port-unreachable")
    return " ".join([*body[:2], *filter(None, header), *body[2:]])


def _recent(words: list[str]) -> list[str]:
    """The ``-m recent`` match's options in iptables-save's order, with its defaults."""
    start = words.index("recent") + 1
    end = next((i for i in range(start, len(words)) if words[i] in ("-m", "-j")), len(words))
    values = {"--name": "DEFAULT", "--mask": "255.255.255.255"}
    command: list[str] = []
    counts: list[str] = []
    flags: list[str] = []
    side = "--rsource"
    index = start
    while index < end:
        word = words[index]
        index += 1
        if word in values:
            values[word], index = words[index], index + 1
        elif word in ("--seconds", "--hitcount"):
            counts += (word, words[index])
            index += 1
        elif word in ("--set", "--rcheck", "--update", "--remove"):
            command.append(word)
        elif word in ("--rsource", "--rdest"):
            side = word
        else:
            flags.append(word)
    named = ["--name", values["--name"], "--mask", values["--mask"], side]
    return [*words[:start], *command, *counts, *flags, *named, *words[end:]]


#: Options whose value iptables-save prints in a form of its own.
_VALUED: dict[str, Callable[[str], str]] = {
    "--comment": _saved_string,
    "--probability": _probability,
    "--mark": _hex,
    **dict.fromkeys(_MARKS, _hex),
}


def saved_chains(saved: str) -> dict[str, list[str]]:
    """Each chain of an ``iptables-save`` listing of one table, with its rules' lines."""
    chains: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("-A "):
            chains.setdefault(line[3 : line.index(" ", 3)], []).append(line)
        elif line.startswith(":"):
            chains.setdefault(line[1 : line.index(" ")], [])
    return chains


def unchanged_chains_dropped(text: str, saved: Mapping[str, str]) -> str:
    """
    C{text} (restore input) without the chains of a table in C{saved}
    (table -> its ``iptables-save`` listing) whose rules the table holds
    already, in order: neither declared (which would empty them) nor
    written.  Chains deleted (``-X``) stay.
    """
    out: list[str] = []
    block: list[str] = []
    listing: str | None = None
    for line in text.split("\n"):
        if line.startswith("*"):
            listing = saved.get(line[1:])
            block = [line]
        elif line == "COMMIT" and block:
            out += block if listing is None else _changed_only(block, saved_chains(listing))
            out.append(line)
            block = []
        elif block:
            block.append(line)
        else:
            out.append(line)
    return "\n".join(out)


def _changed_only(block: list[str], table: Mapping[str, list[str]]) -> list[str]:
    declared = [line[1 : line.index(" ")] for line in block if line.startswith(":")]
    held = {chain for chain in declared if chain in table}
    if not held:
        return block
    rules: dict[str, list[str]] = {chain: [] for chain in held}
    for line in block:
        if line.startswith("-A "):
            chain = line[3 : line.index(" ", 3)]
            if chain in held:
                rules[chain].append(line)
        elif line.startswith("-X "):
            held.discard(line[3:])
    same = {
        chain
        for chain in held
        if len(rules[chain]) == len(table[chain])
        and all(map(str.__eq__, map(canonical_rule, rules[chain]), table[chain]))
    }
    if not same:
        return block
    return [
        line
        for line in block
        if not (
            (line.startswith(":") and line[1 : line.index(" ")] in same)
            or (line.startswith("-A ") and line[3 : line.index(" ", 3)] in same)
        )
    ]


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

    async def _call(
        self, argv: Sequence[str], stdin: bytes | None = None, max_output: int = MAX_OUTPUT
    ) -> bytes:
        try:
            done = await run_command(
                self.reactor,
                (*self.prefix, *argv),
                timeout=TIMEOUT,
                stdin=stdin,
                max_output=max_output,
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
        argv = (f"{self.command}-save", "-t", table)
        return (await self._call(argv, max_output=LISTING_MAX)).decode()

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
        return list(saved_chains(await self.save(table)))
