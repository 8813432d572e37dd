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
"""

from __future__ import annotations

import ctypes
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["GlibcHeap", "Heap", "HeapTrimmer", "glibc_heap"]

#: How often the heap is looked at, in seconds.
INTERVAL = 10.0
#: How much more free space the heap must hold than it did at least before it is trimmed.
SLACK = 4 * 1024 * 1024


class Heap(Protocol):
    """The C allocator, as far as trimming it goes."""

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

    def free(self) -> int:
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._malloc_trim(0)


def glibc_heap() -> GlibcHeap | None:
    """This process's glibc heap; None under another C library (musl has no malloc_trim)."""
    try:
        return GlibcHeap(ctypes.CDLL(None))
    except (OSError, AttributeError):
        return None


class HeapTrimmer(Service):
    """
    Every C{interval} seconds, trim C{heap} if the free space it holds grew
    by C{slack} or more since it was least (a trim starts anew from there).

    :param heap: None (not glibc): the service does nothing.
    """

    name = "heap-trimmer"

    def __init__(
        self,
        clock: IReactorTime,
        heap: Heap | None,
        interval: float = INTERVAL,
        slack: int = SLACK,
    ) -> None:
        self.clock = clock
        self.heap = heap
        self.interval = interval
        self.slack = slack
        self.least = 0
        self.trims = 0
        self._next: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.heap is not None:
            self.least = self.heap.free()
            self._next = self.clock.callLater(self.interval, self._look)

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _look(self) -> None:
        assert self.heap is not None
        free = self.heap.free()
        if free - self.least >= self.slack:
            self.heap.trim()
            self.trims += 1
            self.least = free
        else:
            self.least = min(self.least, free)
        self._next = self.clock.callLater(self.interval, self._look)
