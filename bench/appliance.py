"""
Appliance benchmark: what ``appliance/build`` costs and makes, and the image
booted (tests/support/appliance.py, as tests/test_appliance.py boots it).

    python bench/appliance.py [--output docs/appliance-benchmark.md]

1. the build: its wall time, the compressed root file system's size and the
   disk image's (apparent, and the blocks it holds);
2. under ``systemd-nspawn --boot`` (root file system from the tarball, volatile
   overlay): from nspawn's start to the API answering ``/readyz`` (this host's
   kubectl in the container's network, polled), then the resident memory of
   every process the image runs, after C{--idle} seconds;
3. under qemu with TCG (no KVM here): from qemu's start to the node list on
   the serial console (k3stw-console, once the server is ready), in wall time
   and in the guest's own uptime.

Goals (issue 23): compressed root file system under 150 MB; API ready within
5 s of boot under nspawn.  Needs root, as the tests do.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.appliance import Container, VirtualMachine, build, wait_for

MB = 1000 * 1000
MIB = 1024 * 1024


def rss_by_program(container: Container) -> dict[str, tuple[int, int]]:
    """Resident memory (bytes) and process count per program name in C{container}."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    for pid in container.processes():
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        found[fields["Name"].strip()].append(int(fields["VmRSS"].split()[0]) * 1024)
    return {name: (sum(sizes), len(sizes)) for name, sizes in found.items()}


def boot_nspawn(out: Path, work: Path, idle: float) -> tuple[float, dict[str, tuple[int, int]]]:
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--zstd", "-xf", str(out / "k3stw-rootfs.tar.zst")],
                   check=True)  # fmt: skip
    container = Container(root, work / "nspawn.log", {})
    started = time.monotonic()
    container.start()
    try:
        wait_for(
            "/readyz", lambda: container.kubectl("get", "--raw", "/readyz").stdout == "ok", 120
        )
        ready = time.monotonic() - started
        time.sleep(idle)
        memory = rss_by_program(container)
        container.stop()
    finally:
        container.kill()
    return ready, memory


def boot_qemu(out: Path, work: Path) -> tuple[float, float]:
    image = work / "k3stw.img"
    subprocess.run(["cp", "--sparse=always", str(out / "k3stw.img"), str(image)], check=True)
    machine = VirtualMachine(out, image, work / "qemu.log")
    started = time.monotonic()
    machine.start()
    try:
        listed = machine.wait_for_console(r"\[ *([0-9.]+)\] k3stw-console.*k3stw: the API", 900)
        wall = time.monotonic() - started
    finally:
        machine.stop()
    return wall, float(listed.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds idle before the RSS")
    args = parser.parse_args()
    # Left behind if a step fails, with its logs.
    work = Path(tempfile.mkdtemp(prefix="k3stw-bench-appliance-"))
    out = work / "out"
    started = time.monotonic()
    build(out)
    build_time = time.monotonic() - started
    rootfs = (out / "k3stw-rootfs.tar.zst").stat().st_size
    image = (out / "k3stw.img").stat()
    nspawn_ready, memory = boot_nspawn(out, work, args.idle)
    qemu_wall, qemu_uptime = boot_qemu(out, work)
    shutil.rmtree(work)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    lines = [
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC at {commit}, "
        f"load average {os.getloadavg()[0]:.1f}.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| `appliance/build` wall time | {build_time:.0f} s | |",
        f"| `k3stw-rootfs.tar.zst` | {rootfs / MB:.1f} MB | < 150 MB |",
        f"| `k3stw.img` (apparent / allocated) | {image.st_size / MB:.0f} MB / "
        f"{image.st_blocks * 512 / MB:.0f} MB | |",
        f"| nspawn: start to `/readyz` ok | {nspawn_ready:.2f} s | < 5 s |",
        f"| qemu TCG: start to the node list on the console | {qemu_wall:.1f} s "
        f"(guest uptime {qemu_uptime:.1f} s) | |",
        "",
        f"Idle RSS under nspawn, {args.idle:.0f} s after `/readyz`:",
        "",
        "| program | processes | RSS, MiB |",
        "|---|---|---|",
    ]
    for name, (rss, count) in sorted(memory.items(), key=lambda item: -item[1][0]):
        lines.append(f"| {name} | {count} | {rss / MIB:.1f} |")
    total = sum(rss for rss, _ in memory.values())
    lines.append(f"| **everything** | {sum(n for _, n in memory.values())} | {total / MIB:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
