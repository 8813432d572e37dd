"""The host facts the kubelet reports, read from fake files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet import hostinfo


class HostFactTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.missing = self.dir / "missing"

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def test_cpu_count_from_the_online_list(self) -> None:
        self.assertEqual(hostinfo.cpu_count(self.write("online", "0-3,6,8-9\n")), 7)
        self.assertEqual(hostinfo.cpu_count(self.write("one", "0\n")), 1)

    def test_cpu_count_without_the_file(self) -> None:
        self.assertEqual(hostinfo.cpu_count(self.missing), os.cpu_count() or 1)
        self.assertEqual(hostinfo.cpu_count(self.write("junk", "x-y\n")), os.cpu_count() or 1)

    def test_memory(self) -> None:
        meminfo = self.write("meminfo", "MemFree:  100 kB\nMemTotal:       8029540 kB\n")
        self.assertEqual(hostinfo.memory_bytes(meminfo), 8029540 * 1024)
        self.assertEqual(hostinfo.memory_bytes(self.missing), 0)
        self.assertEqual(hostinfo.memory_bytes(self.write("empty", "")), 0)

    def test_storage_of_a_directory_not_yet_made(self) -> None:
        stat = os.statvfs(self.dir)
        self.assertEqual(
            hostinfo.storage_bytes(self.dir / "not" / "yet"), stat.f_blocks * stat.f_frsize
        )
        self.assertGreater(hostinfo.storage_bytes(self.dir), 0)

    def test_machine_and_boot_ids(self) -> None:
        machine = self.write("machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n")
        self.assertEqual(
            hostinfo.machine_id((self.missing, machine)), "3d1219c7c4c5404aaa1f6d2a48adfda4"
        )
        self.assertEqual(hostinfo.machine_id((self.missing,)), "")
        boot = self.write("boot_id", "52523a81-23ed-4532-86d4-599a2e38714e\n")
        self.assertEqual(hostinfo.boot_id(boot), "52523a81-23ed-4532-86d4-599a2e38714e")
        self.assertEqual(hostinfo.boot_id(self.missing), "")

    def test_system_uuid_from_firmware(self) -> None:
        product = self.write("product_uuid", "4C4C4544-0042-3510-8052-B4C04F4E4B32\n")
        self.assertEqual(
            hostinfo.system_uuid(product, machine="ab" * 16),
            "4c4c4544-0042-3510-8052-b4c04f4e4b32",
        )

    def test_system_uuid_derived_from_the_machine_id(self) -> None:
        self.assertEqual(
            hostinfo.system_uuid(self.missing, machine="3d1219c7c4c5404aaa1f6d2a48adfda4"),
            "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4",
        )
        odd = hostinfo.system_uuid(self.missing, machine="not-hex")
        self.assertEqual(odd, str(uuid.UUID(odd)))
        self.assertEqual(hostinfo.system_uuid(self.missing, machine=""), "")

    def test_os_image(self) -> None:
        release = self.write("os-release", 'NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
        self.assertEqual(hostinfo.os_image((self.missing, release)), "Debian GNU/Linux 12")
        bare = self.write("bare", "PRETTY_NAME=Alpine\n")
        self.assertEqual(hostinfo.os_image((bare,)), "Alpine")
        self.assertEqual(hostinfo.os_image((self.missing,)), "Linux")

    def test_architecture_as_go_names_it(self) -> None:
        for machine, go in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("armv7l", "arm"),
            ("i686", "386"),
            ("riscv64", "riscv64"),
            ("s390x", "s390x"),
        ]:
            self.assertEqual(hostinfo.architecture(machine), go)

    def test_this_host(self) -> None:
        facts = hostinfo.read_host_facts(self.dir)
        self.assertEqual(facts.kernel_version, os.uname().release)
        self.assertEqual(facts.operating_system, "linux")
        self.assertGreater(facts.cpus, 0)
        self.assertEqual(facts.hostname, hostinfo.hostname())
