"""
Appliance images for the tests and bench/appliance.py: ``appliance/build``
run once per process, its root file system booted under ``systemd-nspawn``
(L{Container}) and its disk image under qemu with TCG (L{VirtualMachine}).

Needs root, mmdebstrap, systemd-container, qemu-system-x86, e2fsprogs and
zstd (run-tests.sh installs them) and Debian's mirror: without them the tests
fail.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
BUILD = SOURCE / "appliance" / "build"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Inside the image: the kubeconfig the server writes.
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"

_built: dict[str, Path | BaseException] = {}


def built(role: str = "server") -> Path:
    """
    The directory ``appliance/build --role C{role}`` wrote, built at the first
    call of this process (a failed build fails every later call too).
    """
    if role not in _built:
        out = Path(tempfile.mkdtemp(prefix=f"k3stw-appliance-{role}-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        try:
            build(out, role)
            _built[role] = out
        except BaseException as error:
            _built[role] = error
    result = _built[role]
    if isinstance(result, BaseException):
        raise result
    return result


def build(out: Path, role: str = "server") -> None:
    """Run ``appliance/build`` into C{out}."""
    done = subprocess.run(
        [sys.executable, str(BUILD), "--output", str(out), "--role", role],
        capture_output=True, timeout=1200,
    )  # fmt: skip
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise AssertionError(f"appliance/build failed ({done.returncode}):\n{output[-4000:]}")


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll C{check} until it holds; fail naming C{what} after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _cgroup_hierarchies() -> list[Path]:
    """The cgroup hierarchies nspawn works in: cgroup v2 and v1's name=systemd."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount, filesystem = line.split(" - ", 1)
        kind, _, options = filesystem.split()[:3]
        if kind == "cgroup2" or (kind == "cgroup" and "name=systemd" in options.split(",")):
            found.append(Path(mount.split()[4]))
    return found


class Container:
    """
    The image's root file system C{root} booted under ``systemd-nspawn --boot``
    with a private network and a volatile overlay on C{root}, in cgroups of
    its own (C{cgroups}, made by L{start}) so that what it leaves can be seen.
    ``--register=no --keep-unit``: no systemd-machined on this host.
    """

    def __init__(self, root: Path, log: Path, binds: dict[Path, str]) -> None:
        self.root = root
        self.log = log
        self.binds = binds
        self.cgroups: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.pid_namespace = ""
        self.name = ""

    def start(self) -> None:
        """Start nspawn; L{leader} is the container's init once it runs."""
        self.name = name = f"k3stw-appliance-{os.getpid()}-{time.monotonic_ns()}"
        self.cgroups = [hierarchy / name for hierarchy in _cgroup_hierarchies()]
        for cgroup in self.cgroups:
            cgroup.mkdir()

        def enter_cgroups() -> None:
            for cgroup in self.cgroups:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        binds = [f"--bind-ro={source}:{target}" for source, target in self.binds.items()]
        argv = ["systemd-nspawn", "--boot", "--private-network", "--volatile=overlay",
                "--register=no", "--keep-unit", f"--machine={name}", f"--directory={self.root}",
                *binds]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
                preexec_fn=enter_cgroups,
            )  # fmt: skip
        wait_for("the container's init", self._find_leader, 30)

    def _find_leader(self) -> bool:
        """Whether nspawn's child in a PID namespace of its own (the container's init) runs."""
        assert self.process is not None
        own = os.readlink(f"/proc/{self.process.pid}/ns/pid")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for child in children.read_text().split():
            with contextlib.suppress(OSError):
                namespace = os.readlink(f"/proc/{child}/ns/pid")
                if namespace != own:
                    self.leader, self.pid_namespace = int(child), namespace
                    return True
        return False

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run C{argv} inside the container (all its namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i", f"PATH={PATH}",
             *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def active(self, unit: str) -> bool:
        """Whether C{unit} is active (for a Type=notify unit: it said it is ready)."""
        return self.run("systemctl", "is-active", unit).stdout.strip() == "active"

    def kubectl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """This host's kubectl in the container's network, with the server's kubeconfig."""
        kubeconfig = f"/proc/{self.leader}/root{KUBECONFIG}"
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-n", "kubectl", "--kubeconfig", kubeconfig,
             "--request-timeout=10s", *argv],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def processes(self) -> list[int]:
        """The pids (on this host) of every process in the container's PID namespace."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "pid") == self.pid_namespace:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to nspawn (the container halts); its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def remove_cgroups(self) -> list[str]:
        """
        Remove the cgroups the container ran in, deepest first; the ones a
        process still holds (their paths and pids), which stay.
        """
        held = []
        for top in self.cgroups:
            if not top.exists():
                continue
            for directory, _, _ in sorted(os.walk(top), key=lambda e: -len(e[0])):
                procs = Path(directory, "cgroup.procs").read_text().split()
                if procs:
                    held.append(f"{directory}: {' '.join(procs)}")
                else:
                    os.rmdir(directory)
        return held

    def kill(self) -> None:
        """Cleanup after a failure: end nspawn (and so the container) by its pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for pid in self.processes() if self.pid_namespace else []:
            os.kill(pid, signal.SIGKILL)
        self.remove_cgroups()


class VirtualMachine:
    """
    The disk image C{image} booted under ``qemu-system-x86_64`` with TCG (no
    KVM here), no network device (nor any device but the disk: fewer to probe
    under TCG), its serial console on C{stdout}, with the kernel and initrd
    C{appliance/build} took from it.
    """

    def __init__(self, out: Path, image: Path, log: Path) -> None:
        self.out = out
        self.image = image
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._pending = b""

    def start(self) -> None:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
                "-nodefaults", "-nic", "none", "-display", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", str(self.out / "vmlinuz"), "-initrd", str(self.out / "initrd.img"),
                "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
                "-drive", f"file={self.image},format=raw,if=virtio"]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def wait_for_console(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first serial console line matching C{pattern}, read within C{timeout} s."""
        assert self.process is not None and self.process.stdout is not None
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.log.open("ab") as log:
            while True:
                while b"\n" in self._pending:
                    line, self._pending = self._pending.split(b"\n", 1)
                    found = wanted.search(line.decode(errors="replace"))
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no console line matching {pattern!r}; see {self.log}")
                readable, _, _ = select.select([self.process.stdout], [], [], min(left, 1.0))
                chunk = os.read(self.process.stdout.fileno(), 65536) if readable else b""
                log.write(chunk)
                self._pending += chunk

    def stop(self) -> None:
        """End qemu by its pid (the guest's disk is the test's own copy)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def seed_disk_image(image: Path, seed: Path) -> None:
    """Write C{seed} as the image's ``/boot/k3stw/config.yaml``, without mounting it."""
    done = subprocess.run(
        ["debugfs", "-w", "-R", f"write {seed} /boot/k3stw/config.yaml", str(image)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0 or "rror" in done.stderr:
        raise AssertionError(f"debugfs failed: {done.stderr}")
