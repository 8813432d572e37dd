"""
Memory-backed volumes for real: in a test machine (its own mount namespace),
the volume manager mounts a tmpfs of the emptyDir's ``sizeLimit`` with
mount(8) under ``/var/lib/kubelet``, and a later kubelet process's cleanup
unmounts it and removes the pod's directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.machines import machines

SCRIPT = """
import sys
from twisted.internet import task
from twisted.internet.defer import Deferred
from k3stw.kubelet.volumes import SystemMounter, VolumeManager

class NoAPI:
    async def get(self, path):
        assert path == "/api/v1/nodes/m1", path
        return {"status": {"allocatable": {"memory": "1Gi"}}}

    async def create(self, path, obj):
        raise AssertionError(path)

POD = {
    "metadata": {"name": "p", "namespace": "default", "uid": "u-1"},
    "spec": {"volumes": [{"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}]},
}

async def main(reactor):
    manager = VolumeManager(NoAPI(), reactor, "m1", SystemMounter(reactor))
    if sys.argv[1] == "prepare":
        await manager.prepare(POD)
    else:
        await manager.cleanup("u-1")

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""
VOLUME = "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~empty-dir/ram"


class MemoryVolumeInAMachineTests(SynchronousTestCase):
    def test_tmpfs_mounted_and_cleaned_up(self) -> None:
        work = Path(self.mktemp()).absolute()
        machine = machines(self, work / "machines", 1)[0]
        machine.boot()
        script = work / "volumes.py"
        script.write_text(SCRIPT)
        run = f"{sys.executable} {script}"
        machine.run(f"{run} prepare")
        mounts = [line.split() for line in machine.run("cat /proc/self/mounts").splitlines()]
        (mounted,) = [m for m in mounts if m[1] == VOLUME]
        self.assertEqual(mounted[2], "tmpfs")
        self.assertIn("size=8192k", mounted[3].split(","))
        self.assertEqual(machine.run(f"stat -c %a {VOLUME}").strip(), "777")
        machine.run(f"{run} cleanup")
        self.assertNotIn(VOLUME, machine.run("cat /proc/self/mounts"))
        self.assertEqual(machine.run("ls -A /var/lib/kubelet/pods").strip(), "")
