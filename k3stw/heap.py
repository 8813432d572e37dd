"""
Giving the C heap's freed pages back to the kernel.

glibc's ``free`` keeps what it is handed: only the top of the main heap is
returned by itself, so after a burst (a hundred pods started at once: TLS
connections, JSON documents, gRPC calls on a dozen threads, each with its own
malloc arena) the process keeps its peak's pages for good, though most of the
heap is free.  ``malloc_trim(0)`` hands every free page of every arena back
(``madvise(MADV_DONTNEED)``); the allocator keeps its chunks and simply faults
new pages in when it reuses them.  L{HeapTrimmer} looks at the heap on a
clock and trims it once the free space it holds has grown by more than a
slack since it was least (the last trim starts anew), so a steady process
never trims, and a burst's pages go back within one interval of its end.
What the heap has handed out barely moves: a burst leaves it spread over
its peak's pages, so it is the free space that tells.

Before that, what the heap has handed out may be held by Python's cyclic
garbage: a closed TLS connection is a cycle (protocol, transport, their
Deferreds) that keeps its OpenSSL state, tens of KiB in C that the cyclic
collector does not count, so a burst's hundreds of connections wait for a
rare full collection with megabytes of heap.  So when the heap has handed
out more than a slack over what it had after the last collection, the
trimmer collects first (a full collection: tens of ms, only while the
heap grows).

The trimmer also forgets the source lines that formatting a traceback left
in ``linecache``: every logged failure caches the whole text of each file on
its stack, for good, and the next traceback reads them again.
"""

from __future__ import annotations

import ctypes
import gc
import linecache
from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "GlibcHeap",
    "Heap",
    "HeapTrimmer",
    "forget_source_lines",
    "glibc_heap",
    "process_heap_trimmer",
]

#: glibc's ``mallopt`` parameter for the most malloc arenas.
M_ARENA_MAX = -8
#: The arenas a k3stw process keeps: by default every thread that allocates
#: while another holds an arena gets one of its own (up to eight per core),
#: each keeping its own free pages; k3stw's threads (gRPC's pollers, the
#: reactor's pool for CRI and DNS) are seldom busy at once, so two serve
#: without contention and keep the heap compact (about 5 MiB less with 100 pods).
ARENAS = 2
#: How often the heap is looked at, in seconds.
INTERVAL = 10.0
#: How much the heap's free space (or what it handed out) must grow before a trim (a collection).
SLACK = 4 * 1024 * 1024


class Heap(Protocol):
    """The C allocator, as far as trimming it goes."""

    def in_use(self) -> int:
        """The bytes the heap has handed out, in every arena (large mmap'd blocks aside)."""

    def free(self) -> int:
        """The bytes the heap holds free, in every arena (their pages may be resident)."""

    def trim(self) -> None:
        """Hand the heap's free pages back to the kernel."""


class _Mallinfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33 and later): every field a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class GlibcHeap:
    """glibc's malloc, through C{mallinfo2} and C{malloc_trim}."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _Mallinfo2
        self._mallinfo2.argtypes = []
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.restype = ctypes.c_int
        self._malloc_trim.argtypes = [ctypes.c_size_t]
        self._mallopt = libc.mallopt
        self._mallopt.restype = ctypes.c_int
        self._mallopt.argtypes = [ctypes.c_int, ctypes.c_int]

    def in_use(self) -> int:
        return int(self._mallinfo2().uordblks)

    def free(self) -> int:
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._malloc_trim(0)

    def limit_arenas(self, count: int = ARENAS) -> bool:
        """Use at most C{count} arenas from now on (call before threads start); whether it took."""
        return bool(self._mallopt(M_ARENA_MAX, count))


def glibc_heap() -> GlibcHeap | None:
    """This process's glibc heap; None under another C library (musl has no malloc_trim)."""
    try:
        return GlibcHeap(ctypes.CDLL(None))
    except (OSError, AttributeError):
        return None


def forget_source_lines() -> None:
    """
    Drop the source files ``linecache`` read for tracebacks; keep the lines
    it was handed without a file (attrs' generated methods), which no later
    traceback could read again.
    """
    for name, entry in list(linecache.cache.items()):
        # A file read from disk has its size and mtime; a lazy or handed-in entry has none.
        if len(entry) == 4 and entry[1] is not None:
            del linecache.cache[name]


class HeapTrimmer(Service):
    """
    Every C{interval} seconds: C{collect} Python's cyclic garbage if the
    C{heap} handed out C{slack} or more over its least since the last
    collection; then trim it if the free space it holds grew by C{slack} or
    more since it was least (a trim starts anew from there).

    :param heap: None (not glibc): the service does nothing.
    :param collect: a full collection (C{gc.collect}).
    """

    name = "heap-trimmer"

    def __init__(
        self,
        clock: IReactorTime,
        heap: Heap | None,
        interval: float = INTERVAL,
        slack: int = SLACK,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        self.clock = clock
        self.heap = heap
        self.interval = interval
        self.slack = slack
        self.collect = collect
        #: The least handed out since the last collection, the least free since the last trim.
        self.least_in_use = 0
        self.least_free = 0
        self.collections = 0
        self.trims = 0
        self._next: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.heap is not None:
            self.least_in_use = self.heap.in_use()
            self.least_free = self.heap.free()
            self._next = self.clock.callLater(self.interval, self._look)

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _look(self) -> None:
        assert self.heap is not None
        forget_source_lines()
        in_use = self.heap.in_use()
        if in_use - self.least_in_use >= self.slack:
            self.collect()
            self.collections += 1
            self.least_in_use = self.heap.in_use()
        else:
            self.least_in_use = min(self.least_in_use, in_use)
        free = self.heap.free()
        if free - self.least_free >= self.slack:
            self.heap.trim()
            self.trims += 1
            self.least_free = free
        else:
            self.least_free = min(self.least_free, free)
        self._next = self.clock.callLater(self.interval, self._look)


def process_heap_trimmer(clock: IReactorTime) -> HeapTrimmer:
    """
    The trimmer of this process's heap, its arenas limited first to
    L{ARENAS}: call it before any thread starts.
    """
    heap = glibc_heap()
    if heap is not None:
        heap.limit_arenas()
    return HeapTrimmer(clock, heap)
