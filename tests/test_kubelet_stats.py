"""The Summary API: the host usage it reports, the document, the CPU rate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet import hostinfo
from k3stw.kubelet.stats import CPUUsageRate, build_summary
from tests.support.kubelet import NOW, write_proc


class HostUsageReaderTests(SynchronousTestCase):
    """The readers of /proc, against fixture files."""

    def setUp(self) -> None:
        self.proc = write_proc(Path(self.mktemp()))
        self.empty = Path(self.mktemp())
        self.empty.mkdir()

    def test_cpu_time_counts_busy_ticks_only(self) -> None:
        """user+nice+system+irq+softirq+steal ticks, in nanoseconds; btime is the boot."""
        times = hostinfo.read_cpu_times(self.proc, ticks_per_second=100)
        self.assertEqual(
            times, hostinfo.CPUTimes((1000 + 20 + 300 + 5 + 6 + 7) * 10**7, 1740800000)
        )

    def test_cpu_time_without_the_file_or_cpu_line(self) -> None:
        """No /proc/stat, or one without a cpu line, is no reading."""
        self.assertIsNone(hostinfo.read_cpu_times(self.empty))
        (self.empty / "stat").write_text("intr 1\n")
        self.assertIsNone(hostinfo.read_cpu_times(self.empty))

    def test_meminfo_in_bytes(self) -> None:
        """kB values become bytes; unit-less counts stay as they are."""
        memory = hostinfo.read_meminfo(self.proc)
        self.assertEqual(memory["MemTotal"], 8000000 * 1024)
        self.assertEqual(memory["Inactive(file)"], 1000000 * 1024)
        self.assertEqual(memory["HugePages_Total"], 0)
        self.assertEqual(hostinfo.read_meminfo(self.empty), {})

    def test_vmstat(self) -> None:
        """The page-fault counters are read by name."""
        vmstat = hostinfo.read_vmstat(self.proc)
        self.assertEqual((vmstat["pgfault"], vmstat["pgmajfault"]), (987654, 321))
        self.assertEqual(hostinfo.read_vmstat(self.empty), {})

    def test_interfaces_leave_out_loopback_and_veths(self) -> None:
        """/proc/net/dev's counters for the host's own interfaces."""
        interfaces = hostinfo.read_interfaces(self.proc)
        self.assertEqual(
            interfaces,
            [
                hostinfo.InterfaceCounters("eth0", 123456, 2, 654321, 3),
                hostinfo.InterfaceCounters("wlan0", 10, 0, 20, 0),
            ],
        )
        self.assertEqual(hostinfo.read_interfaces(self.empty), [])

    def test_process_limits(self) -> None:
        """pid_max, and the task total of /proc/loadavg."""
        self.assertEqual(hostinfo.read_process_limits(self.proc), (4194304, 345))

    def test_process_count_without_loadavg(self) -> None:
        """Without loadavg the numeric entries of the proc root are counted."""
        for pid in ("1", "42", "self"):
            (self.empty / pid).mkdir()
        self.assertEqual(hostinfo.read_process_limits(self.empty), (None, 2))

    def test_filesystem_usage_of_a_directory_not_yet_made(self) -> None:
        """statvfs of the nearest existing parent, in bytes and inodes."""
        stat = os.statvfs(self.empty)
        usage = hostinfo.filesystem_usage(self.empty / "not" / "yet")
        assert usage is not None
        self.assertEqual(usage.capacity_bytes, stat.f_blocks * stat.f_frsize)
        self.assertEqual(usage.inodes, stat.f_files)
        self.assertEqual(usage.inodes_used, usage.inodes - usage.inodes_free)
        self.assertLessEqual(usage.used_bytes, usage.capacity_bytes)

    def test_read_host_usage_takes_the_default_route_interface(self) -> None:
        """One reading gathers every reader's answer."""
        usage = hostinfo.read_host_usage(self.empty, self.proc)
        self.assertEqual(usage.default_interface, "wlan0")
        self.assertEqual(usage.pid_max, 4194304)
        self.assertIsNotNone(usage.cpu)
        self.assertIsNotNone(usage.filesystem)


def fixture_usage(**changes: Any) -> hostinfo.HostUsage:
    fields: dict[str, Any] = {
        "cpu": hostinfo.CPUTimes(5_000_000_000, 1740800000),
        "memory": {
            "MemTotal": 8000,
            "MemFree": 2000,
            "Inactive(file)": 1000,
            "AnonPages": 1500,
        },
        "vmstat": {"pgfault": 10, "pgmajfault": 1},
        "interfaces": [
            hostinfo.InterfaceCounters("eth0", 1, 2, 3, 4),
            hostinfo.InterfaceCounters("wlan0", 5, 6, 7, 8),
        ],
        "default_interface": "wlan0",
        "filesystem": hostinfo.FilesystemUsage(1000, 400, 550, 100, 60),
        "pid_max": 32768,
        "processes": 300,
    }
    fields.update(changes)
    return hostinfo.HostUsage(**fields)


class SummaryTests(SynchronousTestCase):
    """The Summary API document built from one reading."""

    def test_whole_summary(self) -> None:
        """Every section the kubelet reports for a node, with RFC 3339 UTC times."""
        at = NOW.timestamp()
        summary = build_summary("node-a", fixture_usage(), at, 250_000_000)
        time = "2025-03-01T12:00:00Z"
        iface = {"rxBytes": 5, "rxErrors": 6, "txBytes": 7, "txErrors": 8}
        self.assertEqual(
            summary,
            {
                "node": {
                    "nodeName": "node-a",
                    "systemContainers": [],
                    "startTime": "2025-03-01T03:33:20Z",
                    "cpu": {
                        "time": time,
                        "usageNanoCores": 250_000_000,
                        "usageCoreNanoSeconds": 5_000_000_000,
                    },
                    "memory": {
                        "time": time,
                        "availableBytes": 8000 - 5000,
                        "usageBytes": 6000,
                        "workingSetBytes": 5000,
                        "rssBytes": 1500,
                        "pageFaults": 10,
                        "majorPageFaults": 1,
                    },
                    "network": {
                        "time": time,
                        "name": "wlan0",
                        **iface,
                        "interfaces": [
                            {
                                "name": "eth0",
                                "rxBytes": 1,
                                "rxErrors": 2,
                                "txBytes": 3,
                                "txErrors": 4,
                            },
                            {"name": "wlan0", **iface},
                        ],
                    },
                    "fs": {
                        "time": time,
                        "availableBytes": 400,
                        "capacityBytes": 1000,
                        "usedBytes": 550,
                        "inodesFree": 60,
                        "inodes": 100,
                        "inodesUsed": 40,
                    },
                    "runtime": {
                        "imageFs": {
                            "time": time,
                            "availableBytes": 400,
                            "capacityBytes": 1000,
                            "usedBytes": 0,
                            "inodesFree": 60,
                            "inodes": 100,
                            "inodesUsed": 0,
                        }
                    },
                    "rlimit": {"time": time, "maxpid": 32768, "curproc": 300},
                },
                "pods": [],
            },
        )

    def test_only_cpu_and_memory(self) -> None:
        """?only_cpu_and_memory=true leaves out network, fs, runtime and rlimit."""
        node = build_summary("n", fixture_usage(), 0, None, only_cpu_and_memory=True)["node"]
        self.assertEqual(
            sorted(node), ["cpu", "memory", "nodeName", "startTime", "systemContainers"]
        )
        self.assertNotIn("usageNanoCores", node["cpu"])

    def test_unreadable_host_leaves_fields_out(self) -> None:
        """A missing file empties its fields, as Go's omitempty does with nil pointers."""
        usage = fixture_usage(
            cpu=None,
            memory={},
            interfaces=[],
            filesystem=None,
            pid_max=None,
            processes=None,
        )
        node = build_summary("n", usage, 0, None)["node"]
        time = "1970-01-01T00:00:00Z"
        self.assertIsNone(node["startTime"])
        self.assertEqual(node["cpu"], {"time": time})
        self.assertEqual(node["memory"], {"time": time})
        self.assertEqual(node["network"], {"time": time, "interfaces": []})
        self.assertEqual(node["fs"], {"time": time})
        self.assertEqual(node["rlimit"], {"time": time})

    def test_network_falls_back_to_the_first_interface(self) -> None:
        """Without a default route the first interface is inlined."""
        node = build_summary("n", fixture_usage(default_interface=None), 0, None)["node"]
        self.assertEqual(node["network"]["name"], "eth0")


class CPUUsageRateTests(SynchronousTestCase):
    """usageNanoCores from successive cumulative samples."""

    def test_rate_between_samples(self) -> None:
        """No rate from one sample; then the growth per second, in nanocores."""
        rate = CPUUsageRate(min_interval=1.0)
        self.assertIsNone(rate.observe(100.0, 0))
        self.assertEqual(rate.observe(102.0, 3_000_000_000), 1_500_000_000)
        self.assertEqual(rate.observe(112.0, 4_000_000_000), 100_000_000)

    def test_close_samples_repeat_the_last_rate(self) -> None:
        """A sample sooner than min_interval neither measures nor moves the base."""
        rate = CPUUsageRate(min_interval=1.0)
        rate.observe(0.0, 0)
        self.assertIsNone(rate.observe(0.5, 10**9))
        self.assertEqual(rate.observe(2.0, 2 * 10**9), 10**9)
        self.assertEqual(rate.observe(2.1, 9 * 10**9), 10**9)
        self.assertEqual(rate.observe(4.0, 4 * 10**9), 10**9)
