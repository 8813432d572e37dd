"""
Test machines: each a set of namespaces the test creates (network, mount, PID,
UTS), so that commands written for a real host (k3s's paths under ``/etc`` and
``/var/lib``, a virtualenv in ``/opt``, port 6443, ``sudo``) run unchanged and
touch nothing of this one.

- Network: a named network namespace per machine, joined to the others by a
  veth pair on ``10.199.<n>.0/24``, with a default route to its peer so that the
  machine has a primary address; nothing routes out of it.
- Files: ``/etc``, ``/var/lib``, ``/home`` and ``/opt`` are overlays whose writes land in
  the test's directory; ``/opt`` may show a virtualenv the test built.
- Processes: a PID namespace whose init is a ``sleep``; ending it ends every
  process the machine started.
- A container runtime (``boot(runtime=True)``): ``/run`` is a tmpfs of its own
  and ``/var/lib/rancher`` and ``/var/log`` are private directories (not
  overlays: containerd's overlayfs snapshotter cannot stack on an overlay), so
  containerd, its shims and runc keep k3s's paths; the CNI state under
  ``/var/lib/cni`` and ``/etc/cni`` lands in the overlays.  Containers get
  cgroups under C{cgroup_parent}, removed at shutdown.

Needs root, ``ip``, ``unshare`` and ``nsenter``; a machine that cannot be made
fails the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

#: The shim that makes a README's ``sudo`` commands run as written (the tests run as root).
SUDO = '#!/bin/sh\nif [ "$1" = -E ]; then shift; fi\nexec "$@"\n'

#: The environment commands inside a machine get.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")


class Machine:
    """One test machine; see the module docstring."""

    def __init__(self, case: SynchronousTestCase, workdir: Path, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.root = workdir / name
        self.bin = workdir / "bin"
        #: The cgroup (in every v1 hierarchy) to give containers as their parent.
        self.cgroup_parent = f"/{name}"
        self._init: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        case.addCleanup(self.shutdown)

    def boot(self, opt_layers: tuple[Path, ...] = (), runtime: bool = False) -> None:
        """
        Start the machine's init with its overlays.

        :param opt_layers: directories shown over ``/opt``, read-only; none
            gives a writable ``/opt`` whose writes land in C{root}/opt.
        :param runtime: give it the private paths a container runtime needs
            (see the module docstring); C{rancher} is then its ``/var/lib/rancher``.
        """
        mounts = []
        for path in ("/etc", "/var/lib", "/home") + (() if opt_layers else ("/opt",)):
            upper, work = self.root / f"{path[1:]}-upper", self.root / f"{path[1:]}-work"
            upper.mkdir(parents=True)
            work.mkdir(parents=True)
            layers = f"lowerdir={path},upperdir={upper},workdir={work}"
            mounts.append(f"mount -t overlay overlay -o {layers} {path}")
        if opt_layers:
            lower = ":".join([*map(str, opt_layers), "/opt"])
            mounts.append(f"mount -t overlay overlay -o lowerdir={lower} /opt")
        if runtime:
            for private, path in (
                (self.rancher, "/var/lib/rancher"),
                (self.root / "log", "/var/log"),
            ):
                private.mkdir(parents=True, exist_ok=True)
                mounts.append(f"mkdir -p {path} && mount --bind {private} {path}")
            mounts.append("mount -t tmpfs -o mode=0755 tmpfs /run")
        ready = self.root / "booted"
        setup = " && ".join([f"hostname {self.name}", *mounts, f"touch {ready}", "exec sleep 3600"])
        # ip netns exec mounts a fresh /sys, without the cgroup hierarchies runc needs.
        enter = (
            ["nsenter", f"--net=/run/netns/{self.name}"]
            if runtime
            else ["ip", "netns", "exec", self.name]
        )
        self._init = subprocess.Popen(
            [
                *enter,
                "unshare", "--mount", "--propagation", "private", "--uts", "--pid", "--fork",
                "--mount-proc", "sh", "-c", setup,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "init.log").open("wb"),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (ready.exists() and self._child_of(self._init.pid)):
            if self._init.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "init.log").read_text(errors="replace")
                raise AssertionError(f"machine {self.name} did not boot: {log}")
            time.sleep(0.05)
        self.init_pid = self._child_of(self._init.pid)

    @property
    def rancher(self) -> Path:
        """Where a runtime machine's ``/var/lib/rancher`` lives on this host."""
        return self.root / "rancher"

    def path(self, inside: str) -> Path:
        """A path of the machine's file system as this host reaches it (through its init)."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    @staticmethod
    def _child_of(pid: int) -> int:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return 0
        return int(children[0]) if children else 0

    def _enter(self, command: str) -> list[str]:
        return [
            "nsenter", "--target", str(self.init_pid), "--mount", "--uts", "--net", "--pid",
            "--wd=/", "--", "sh", "-c", command,
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{PATH}",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            # /opt may be read-only here.
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, command: str, timeout: float = 60) -> str:
        """Run C{command} (a shell line) on the machine; its output, or the test fails."""
        done = subprocess.run(
            self._enter(command),
            capture_output=True,
            timeout=timeout,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"on {self.name}: {command!r} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode()

    def reading(self, command: str) -> subprocess.Popen[bytes]:
        """Start C{command} on the machine, its output a pipe to read as it comes."""
        return subprocess.Popen(
            self._enter(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self._environment(),
        )

    def spawn(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        """Start C{command} on the machine in the background, its output to C{log}."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self._enter(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
            )

    def shutdown(self) -> None:
        """
        End every process of the machine (its init first), then its network.

        SIGKILL goes to the machine's init (a ``sleep``), which takes the whole
        PID namespace with it: the teardown of a test machine.  It is no
        fallback for a k3stw process that ignores SIGTERM: the tests stop each
        of those with SIGTERM first and assert it exited on its own.
        """
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            self.init_pid = 0
        if self._init is not None:
            self._init.wait(10)
            self._init = None
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        """Remove the containers' cgroups (runc leaves a pod's parent behind), deepest first."""
        hierarchies = [p / self.cgroup_parent.lstrip("/") for p in Path("/sys/fs/cgroup").iterdir()]
        deadline = time.monotonic() + 10
        for top in hierarchies:
            if not top.is_dir():
                continue
            nested = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in [*nested, top]:
                while True:
                    try:
                        directory.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        # Its last processes are still being reaped.
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


def machines(case: SynchronousTestCase, workdir: Path, count: int) -> list[Machine]:
    """
    C{count} machines, each joined to the first by a veth pair (the first is
    ``10.199.<n>.1``, machine C{n} is ``10.199.<n>.2``); not booted yet.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sudo").write_text(SUDO)
    (bin_dir / "sudo").chmod(0o755)
    tag = f"k3stw{os.getpid() % 100_000}"
    found = [Machine(case, workdir, f"{tag}m{n}", "") for n in range(count)]
    for machine in found:
        _run("ip", "netns", "add", machine.name)
        case.addCleanup(_run, "ip", "netns", "delete", machine.name)
        _run("ip", "-n", machine.name, "link", "set", "lo", "up")
    first = found[0]
    for n, machine in enumerate(found[1:], start=1):
        near, far = f"{tag}a{n}", f"{tag}b{n}"
        _run("ip", "link", "add", near, "type", "veth", "peer", "name", far)
        _run("ip", "link", "set", near, "netns", first.name)
        _run("ip", "link", "set", far, "netns", machine.name)
        for owner, device, host, peer in (
            (first, near, f"10.199.{n}.1", f"10.199.{n}.2"),
            (machine, far, f"10.199.{n}.2", f"10.199.{n}.1"),
        ):
            _run("ip", "-n", owner.name, "addr", "add", f"{host}/24", "dev", device)
            _run("ip", "-n", owner.name, "link", "set", device, "up")
            if not owner.address:
                # The machine's primary address: its default route stays between machines.
                _run("ip", "-n", owner.name, "route", "add", "default", "via", peer)
                owner.address = host
    first.address = first.address or "127.0.0.1"
    return found
