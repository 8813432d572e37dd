"""
The appliance image for real: ``appliance/build`` (built once per test
session, tests/support/appliance.py), looked into and booted two ways.

- Its root file system's tarball: k3s's paths and the server's unit enabled,
  an empty machine-id, no kernel (the disk image has it), and nothing of the
  build host: no hostname, no resolv.conf, none of the CAs it added.
- Its root file system under ``systemd-nspawn --boot --private-network
  --volatile=overlay``, with a seed ``config.yaml`` on the boot medium: the
  first-boot step sets the hostname from it, ``k3s-server.service`` becomes
  active (ready), the real ``kubectl``, in the container's network, lists
  the node, and the airgap tarball placed in the image's ``agent/images`` is in
  containerd's image store; SIGTERM to nspawn halts it cleanly, leaving no
  process, mount or cgroup behind.  No cgroup controller is usable inside
  nspawn here, so no pod could run (the node may be NotReady when listed):
  this test is about the control plane.
- Its disk image under qemu (TCG, no network device), with the seed written
  into the image: the server's own nodes, as its API lists them, reach the
  serial console (k3stw-console.service), this node among them.

Needs root, mmdebstrap, systemd-container, qemu-system-x86, e2fsprogs and zstd
(run-tests.sh installs them) and Debian's mirror: without them the tests fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.appliance import (
    Container,
    VirtualMachine,
    built,
    seed_disk_image,
    wait_for,
)
from tests.support.images import BUSYBOX_IMAGE, write_airgap_images

CTR = ("ctr", "--address", "/run/k3s/containerd/containerd.sock", "--namespace", "k8s.io")
SEED = "node-name: {name}\nwrite-kubeconfig-mode: '0600'\n"


class ImageContentTests(SynchronousTestCase):
    def test_the_image_is_ready_for_k3s_and_carries_nothing_of_the_build_host(self) -> None:
        tarball = built() / "k3stw-rootfs.tar.zst"
        listed = subprocess.run(["tar", "--zstd", "-tf", str(tarball)], check=True, timeout=300,
                                capture_output=True, text=True).stdout.split()  # fmt: skip
        for path in ("var/lib/rancher/k3s/agent/images/", "var/lib/rancher/k3s/server/manifests/",
                     "etc/rancher/k3s/", "opt/k3stw/bin/twistd",
                     "etc/systemd/system/multi-user.target.wants/k3s-server.service"):  # fmt: skip
            self.assertIn(f"./{path}", listed)
        # Each machine gets its own identity and its own network settings.
        for path in ("etc/hostname", "etc/resolv.conf", "usr/lib/modules/"):
            self.assertNotIn(f"./{path}", listed)
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        bundle, machine_id = "etc/ssl/certs/ca-certificates.crt", "etc/machine-id"
        subprocess.run(["tar", "-C", str(work), "--zstd", "-xf", str(tarball), f"./{bundle}",
                        f"./{machine_id}"], check=True, timeout=300)  # fmt: skip
        self.assertEqual((work / machine_id).read_bytes(), b"")
        # The CAs this host added to its own trust (an intercepting proxy's) stay on this host.
        for local in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            key = local.read_text().splitlines()[1]
            self.assertNotIn(key, (work / bundle).read_text(), local)


class ContainerBootTests(SynchronousTestCase):
    def test_the_server_serves_and_stops_leaving_nothing_behind(self) -> None:
        out = built()
        work = Path(self.mktemp()).absolute()
        root = work / "root"
        root.mkdir(parents=True)
        subprocess.run(
            ["tar", "-C", str(root), "--zstd", "-xf", str(out / "k3stw-rootfs.tar.zst")],
            check=True, timeout=300,
        )  # fmt: skip
        write_airgap_images(root / "var/lib/rancher/k3s/agent/images")
        seed = work / "seed.yaml"
        seed.write_text(SEED.format(name="appliance-nspawn"))
        container = Container(root, work / "console.log", {seed: "/boot/k3stw/config.yaml"})
        self.addCleanup(container.kill)
        container.start()

        wait_for("k3s-server.service active", lambda: container.active("k3s-server.service"), 180)
        self.assertEqual(container.run("cat", "/proc/sys/kernel/hostname").stdout.strip(),
                         "appliance-nspawn")  # fmt: skip
        wait_for(
            "kubectl get nodes to list the node",
            lambda: (
                "node/appliance-nspawn" in container.kubectl("get", "nodes", "-o", "name").stdout
            ),
            60,
        )
        # The airgap tarball placed in the image's agent/images is in containerd's store.
        wait_for(
            "the airgap image imported",
            lambda: BUSYBOX_IMAGE in container.run(*CTR, "images", "ls", "-q").stdout.split(),
            60,
        )
        # Debian's own containerd and etcd units stay off: k3stw supervises both.
        debian_units = container.run("systemctl", "is-active", "containerd", "etcd")
        self.assertEqual(debian_units.stdout.split(), ["inactive", "inactive"])

        namespace_pids = container.processes()
        self.assertIn(container.leader, namespace_pids)
        self.assertEqual(container.stop(), 0, (work / "console.log").read_text()[-3000:])
        self.assertEqual(container.processes(), [])
        mounts = Path("/proc/self/mountinfo").read_text()
        self.assertNotIn(str(root), mounts)
        self.assertNotIn(container.name, mounts)
        self.assertFalse(Path("/run/systemd/nspawn/propagate", container.name).exists())
        self.assertEqual(container.remove_cgroups(), [])
        self.assertEqual([cgroup for cgroup in container.cgroups if cgroup.exists()], [])
        # Half a gigabyte, kept (with the console's log) only when the test fails.
        shutil.rmtree(work)


class DiskImageBootTests(SynchronousTestCase):
    def test_the_server_answers_on_the_serial_console(self) -> None:
        out = built()
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        image = work / "k3stw.img"
        subprocess.run(["cp", "--sparse=always", str(out / "k3stw.img"), str(image)], check=True)
        seed = work / "seed.yaml"
        seed.write_text(SEED.format(name="appliance-qemu"))
        seed_disk_image(image, seed)
        machine = VirtualMachine(out, image, work / "console.log")
        self.addCleanup(machine.stop)
        machine.start()

        listed = machine.wait_for_console(r"k3stw: the API of (\S+) lists (\d+) node", 420)
        self.assertEqual(listed.group(1), "appliance-qemu")
        row = machine.wait_for_console(r"k3stw-console\[\d+\]: (\S+)\s+(Ready|NotReady)\s*$", 30)
        self.assertEqual(row.group(1), "appliance-qemu")
        machine.stop()
        shutil.rmtree(work)
