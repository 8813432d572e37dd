"""
Cluster networking benchmarks, one section per component, each printing its
table and, with ``--output``, writing it as its section of the document.

    python bench/network.py --section flannel|proxy|dns|policy [--quick]
                            [--output docs/network-benchmark.md]

Each section lives in ``bench/network_<section>.py`` (its docstring says
what it measures and against which peer); every one runs in network
namespaces it makes and deletes, and ends only the processes it started.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout and this directory importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Each section's module.
SECTIONS = {
    "flannel": "network_flannel",
    "proxy": "network_proxy",
    "dns": "network_dns",
    "policy": "network_policy",
}


def run(*argv: str, stdin: bytes | None = None) -> str:
    """C{argv}'s stdout; its failure ends the benchmark with its stderr."""
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def in_ns(ns: str, *argv: str, stdin: bytes | None = None) -> str:
    """C{argv} run in the network namespace C{ns}."""
    return run("ip", "netns", "exec", ns, *argv, stdin=stdin)


def markdown_table(rows: Sequence[tuple[str, str, str]]) -> str:
    """A section's rows: measure, figure, goal."""
    lines = ["| measure | figure | goal |", "|---|---:|---|"]
    lines += [f"| {m} | {f} | {g} |" for m, f, g in rows]
    return "\n".join(lines)


def report(
    title: str,
    intro: str,
    tool: str,
    started: float,
    quick: bool,
    rows: Sequence[tuple[str, str, str]],
    notes: str,
    output: Path | None,
) -> None:
    """
    Print a section (C{intro}, the machine, C{tool}'s version, the date and
    mode, the table and its notes) and write it into C{output}, if given.
    """
    from api import machine

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    body = (
        f"{intro}\n\n"
        f"Machine: {machine()}; {tool}; load average at the end {load}\n"
        f"Date: {when}; mode: {'quick' if quick else 'full'},"
        f" {time.monotonic() - started:.0f} s in all\n\n"
        f"{markdown_table(rows)}\n\n{notes}\n"
    )
    print(body)
    if output:
        write_section(output, title, body)


def write_section(output: Path, title: str, body: str) -> None:
    """Replace (or add) the section C{title} of C{output}."""
    text = output.read_text() if output.exists() else "# Network benchmark\n"
    heading = f"## {title}\n\n"
    if heading in text:
        before, _, rest = text.partition(heading)
        following = rest.find("\n## ")
        after = rest[following + 1 :] if following >= 0 else ""
        text = before + heading + body + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + heading + body
    output.write_text(text)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--section", choices=sorted(SECTIONS), required=True)
    known, _ = parser.parse_known_args(argv)
    importlib.import_module(SECTIONS[known.section]).main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
