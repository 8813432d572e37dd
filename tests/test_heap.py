"""
The heap trimmer on a Clock (a heap whose use and free space the test sets,
a collection that frees what the test says), and glibc's heap for real: a
freed 64 MiB stays resident until it is trimmed.
"""

from __future__ import annotations

import ctypes
import linecache
import subprocess
import sys
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.heap import INTERVAL, SLACK, GlibcHeap, HeapTrimmer, glibc_heap

MiB = 1024 * 1024


class SetHeap:
    """A heap that handed out C{in_use_bytes} and holds C{free_bytes} free; counts its trims."""

    def __init__(self, free_bytes: int, in_use_bytes: int = 20 * MiB) -> None:
        self.free_bytes = free_bytes
        self.in_use_bytes = in_use_bytes
        self.trims = 0

    def in_use(self) -> int:
        return self.in_use_bytes

    def free(self) -> int:
        return self.free_bytes

    def trim(self) -> None:
        self.trims += 1


class HeapTrimmerTests(SynchronousTestCase):
    def setUp(self) -> None:
        #: What each collection frees of the heap's use (it becomes free space).
        self.garbage = 0
        self.collected: list[int] = []

    def started(self, heap: SetHeap | None) -> tuple[Clock, HeapTrimmer]:
        clock = Clock()

        def collect() -> None:
            assert heap is not None
            self.collected.append(heap.trims)
            heap.in_use_bytes -= self.garbage
            heap.free_bytes += self.garbage
            self.garbage = 0

        trimmer = HeapTrimmer(clock, heap, collect=collect)
        trimmer.startService()
        return clock, trimmer

    def test_steady_heap_is_never_trimmed(self) -> None:
        heap = SetHeap(10 * MiB)
        clock, _ = self.started(heap)
        for step in range(100):
            heap.free_bytes = 10 * MiB + (step % 3) * MiB  # moves, less than the slack
            heap.in_use_bytes = 20 * MiB + (step % 3) * MiB
            clock.advance(INTERVAL)
        self.assertEqual((heap.trims, self.collected), (0, []))

    def test_burst_is_trimmed_at_the_next_look_and_once(self) -> None:
        heap = SetHeap(10 * MiB)
        clock, trimmer = self.started(heap)
        heap.free_bytes = 10 * MiB + SLACK
        clock.advance(INTERVAL - 0.1)
        self.assertEqual(heap.trims, 0)
        clock.advance(0.1)
        self.assertEqual((heap.trims, trimmer.trims), (1, 1))
        # Trimmed pages stay free chunks: the same free space is not trimmed again.
        clock.advance(10 * INTERVAL)
        self.assertEqual(heap.trims, 1)
        heap.free_bytes += SLACK
        clock.advance(INTERVAL)
        self.assertEqual(heap.trims, 2)

    def test_growth_counts_from_the_least_free_space(self) -> None:
        heap = SetHeap(20 * MiB)
        clock, _ = self.started(heap)
        heap.free_bytes = 2 * MiB  # reused
        clock.advance(INTERVAL)
        heap.free_bytes = 2 * MiB + SLACK - 1
        clock.advance(INTERVAL)
        self.assertEqual(heap.trims, 0)
        heap.free_bytes = 2 * MiB + SLACK
        clock.advance(INTERVAL)
        self.assertEqual(heap.trims, 1)

    def test_growing_heap_is_collected_and_what_that_frees_trimmed(self) -> None:
        heap = SetHeap(1 * MiB)
        clock, trimmer = self.started(heap)
        # Closed connections' cycles hold C memory: the heap grows, nothing is free.
        heap.in_use_bytes += SLACK
        self.garbage = SLACK
        clock.advance(INTERVAL)
        self.assertEqual(self.collected, [0])  # collected before the trim
        self.assertEqual((heap.trims, trimmer.collections), (1, 1))
        self.assertEqual(heap.in_use_bytes, 20 * MiB)

    def test_growth_of_use_counts_from_after_the_last_collection(self) -> None:
        heap = SetHeap(1 * MiB)
        clock, _ = self.started(heap)
        heap.in_use_bytes += SLACK  # live objects: a collection frees nothing
        clock.advance(INTERVAL)
        self.assertEqual(len(self.collected), 1)
        heap.in_use_bytes += SLACK - 1
        clock.advance(INTERVAL)
        self.assertEqual(len(self.collected), 1)
        heap.in_use_bytes += 1
        clock.advance(INTERVAL)
        self.assertEqual(len(self.collected), 2)
        self.assertEqual(heap.trims, 0)

    def test_each_look_forgets_the_source_files_tracebacks_read(self) -> None:
        generated = "<generated methods of a test>"
        linecache.cache[generated] = (6, None, ["pass\n"], generated)
        self.addCleanup(linecache.cache.pop, generated, None)
        linecache.getline(__file__, 1)
        self.assertIn(__file__, linecache.cache)
        clock, _ = self.started(SetHeap(free_bytes=0))
        clock.advance(INTERVAL)
        self.assertNotIn(__file__, linecache.cache)
        self.assertEqual(linecache.getline(generated, 1), "pass\n")

    def test_stop_leaves_no_call(self) -> None:
        heap = SetHeap(0)
        clock, trimmer = self.started(heap)
        clock.advance(3 * INTERVAL)
        trimmer.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_heap_no_calls(self) -> None:
        clock, trimmer = self.started(None)
        self.assertEqual(clock.getDelayedCalls(), [])
        trimmer.stopService()


def resident() -> int:
    """This process's VmRSS, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class GlibcHeapTests(SynchronousTestCase):
    def test_freed_pages_stay_resident_until_trimmed(self) -> None:
        heap = glibc_heap()
        assert isinstance(heap, GlibcHeap), "this machine's Python runs on glibc"
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        block = 4096  # below the mmap threshold: heap chunks
        blocks = [libc.malloc(block) for _ in range(64 * MiB // block)]
        for address in blocks:
            libc.memset(address, 1, block)  # resident
        free_before = heap.free()
        # The last block pins the heap's top: glibc cannot shrink it by itself.
        for address in blocks[:-1]:
            libc.free(address)
        self.addCleanup(libc.free, blocks[-1])
        self.assertGreaterEqual(heap.free() - free_before, 60 * MiB)
        kept = resident()
        heap.trim()
        self.assertGreater(kept - resident(), 32 * MiB)

    def test_arenas_limited_for_threads_started_after(self) -> None:
        """After limit_arenas(2), eight allocating threads share two arenas (glibc counts them)."""
        program = (
            "import ctypes, threading\n"
            "from k3stw.heap import glibc_heap\n"
            "import sys\n"
            "if sys.argv[1] == 'limit':\n"
            "    assert glibc_heap().limit_arenas(2)\n"
            "barrier = threading.Barrier(8)\n"
            "def work():\n"
            "    keep = [bytearray(1000) for _ in range(100)]\n"
            "    barrier.wait()\n"
            "threads = [threading.Thread(target=work) for _ in range(8)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "ctypes.CDLL(None).malloc_stats()\n"
        )

        def arenas(mode: str) -> int:
            done = subprocess.run(
                [sys.executable, "-c", program, mode], capture_output=True, timeout=60, check=True
            )
            return done.stderr.decode().count("Arena ")

        self.assertEqual(arenas("limit"), 2)
        self.assertGreater(arenas("default"), 2)
