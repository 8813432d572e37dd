"""
The kubelet's ``GET /containerLogs/<namespace>/<pod>/<container>``: the
request checked as the kubelet checks it (options, pod, container, which
instance: L{k3stw.kubelet.containerlogs}), then the instance's CRI log file
copied to the client by a L{LogStream}.

A L{LogStream} reads on the reactor, a chunk at a time, as fast as the
client takes it (it is the request's producer).  Following, at the end of
the log it asks the runtime whether the container still runs (kube's
``waitLogs``): if not, it reads to the end once more and finishes; if so, it
waits for the file to change (inotify, where the reactor has it) or for a
second to pass, and reads again.  A log the kubelet rotated (``N.log``
renamed, the runtime writing a new ``N.log``) is read to its end, then the
new file from its start.  The client going away ends it all.

Errors after the request was accepted go in the body of the 200, as the
kubelet writes them after its first (empty) write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from k3stw.kubelet.containerlogs import (
    LogFilter,
    LogOptions,
    LogQueryError,
    container_log_id,
    parse_log_options,
    tail_start,
)
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, get_path

__all__ = ["ContainerLogs", "LogHost", "LogStream", "WatchFile", "inotify_watch"]

#: How much of a log is read at a time.
CHUNK = 64 * 1024
#: How much is read before letting the reactor run other work.
SLICE = 1024 * 1024
#: How long a follower waits for a change before looking again (kube's ``logForceCheckPeriod``).
FORCE_CHECK = 1.0

_TEXT = b"text/plain; charset=utf-8"


class LogHost(Protocol):
    """What the log endpoint asks of the kubelet: its pods, its runtime."""

    @property
    def runtime(self) -> Runtime: ...

    def pod_by_name(self, namespace: str, name: str) -> Object | None:
        """The pod, with the status the kubelet holds for it; None if not on this node."""


class _Closeable(Protocol):
    def loseConnection(self) -> None: ...


#: Calls its second argument whenever the file at its first changes, until closed;
#: None when it cannot watch (then a follower only looks every second).
WatchFile = Callable[[str, Callable[[], None]], _Closeable | None]


def inotify_watch(reactor: Any) -> WatchFile:
    """A L{WatchFile} on inotify (Linux)."""

    def watch(path: str, changed: Callable[[], None]) -> _Closeable | None:
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        mask = inotify.IN_MODIFY | inotify.IN_MOVE_SELF | inotify.IN_DELETE_SELF
        try:
            notifier = inotify.INotify(reactor)
            notifier.startReading()
            notifier.watch(
                FilePath(path), mask=mask | inotify.IN_ATTRIB, callbacks=[lambda *_: changed()]
            )
        except Exception:
            return None
        return notifier

    return watch


def _go_error(e: OSError) -> str:
    """An OSError's reason as Go's ``syscall.Errno`` writes it."""
    return (os.strerror(e.errno) if e.errno else str(e)).lower().rstrip(".")


def _container_spec(pod: Object, name: str) -> bool:
    return any(
        c.get("name") == name
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in get_path(pod, "spec", key) or ()
    )


def _answer(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", _TEXT)
    request.setHeader(b"x-content-type-options", b"nosniff")
    return text.encode()


class ContainerLogs:
    """
    The endpoint's logic: check a request, then stream its log.

    :param host: the kubelet's pods and runtime (None until it runs pods).
    :param watch: how followers learn that a file changed (None: they look every second).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        host: Callable[[], LogHost | None],
        watch: WatchFile | None = None,
    ) -> None:
        self.clock = clock
        self.host = host
        self.watch = watch

    def render(self, request: Request, namespace: str, pod_name: str, container: str) -> Any:
        """Answer C{request} for C{container} of C{namespace}/C{pod_name}."""
        for value, what in ((pod_name, "podID"), (container, "container name")):
            if not value:
                return _answer(request, 400, f'{{"message": "Missing {what}."}}')
        if not namespace:
            return _answer(request, 400, '{"message": "Missing podNamespace."}')
        try:
            options = parse_log_options(request.args, self.clock.seconds())
        except LogQueryError as e:
            return _answer(request, e.code, e.message)
        host = self.host()
        pod = host.pod_by_name(namespace, pod_name) if host is not None else None
        if host is None or pod is None:
            return _answer(request, 404, f'pod "{pod_name}" does not exist')
        if not _container_spec(pod, container):
            return _answer(request, 404, f'container "{container}" not found in pod "{pod_name}"')
        try:
            container_id = container_log_id(
                pod_name, pod.get("status") or {}, container, options.previous
            )
        except LogQueryError as e:
            return _answer(request, e.code, e.message)
        request.setResponseCode(200)
        request.setHeader(b"content-type", _TEXT)
        # The kubelet's empty first write: the headers go now, before any log.
        request.write(b"")
        Deferred.fromCoroutine(self._stream(request, host.runtime, container_id, options))
        return NOT_DONE_YET

    async def _stream(
        self, request: Request, runtime: Runtime, container_id: str, options: LogOptions
    ) -> None:
        runtime_id = container_id.partition("://")[2] or container_id
        try:
            try:
                status = await runtime.container_status(runtime_id)
            except CRIError:
                message = f"unable to retrieve container logs for {container_id}"
                request.write(message.encode())
                return
            if _gone(request):
                return
            stream = LogStream(self.clock, request, status.log_path, options, self.watch)
            request.registerProducer(stream, True)

            async def running() -> bool:
                try:
                    now = await runtime.container_status(runtime_id)
                except CRIError:
                    return False
                return now.state == api.CONTAINER_RUNNING

            try:
                await stream.run(running)
            finally:
                # A client that went away took the channel, and its producer, with it.
                if not _gone(request):
                    request.unregisterProducer()
        except Exception:
            self._log.failure("Streaming the log of container {id} failed", id=container_id)
        finally:
            if not request.finished and not _gone(request):
                request.finish()


def _gone(request: Request) -> bool:
    """Whether the client went away (Twisted's Request says so in a private attribute)."""
    return bool(getattr(request, "_disconnected", False))


@implementer(IPushProducer)
class LogStream:
    """
    One log file (and, following, the files that replace it) copied to a
    request through a L{LogFilter}.

    :param path: the container's log path, as the runtime gives it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        path: str,
        options: LogOptions,
        watch: WatchFile | None = None,
    ) -> None:
        self.clock = clock
        self.request = request
        self.path = path
        self.options = options
        self.filter = LogFilter(options)
        self.watch = watch
        self.gone = False
        self._paused = False
        self._waiter: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._watching: _Closeable | None = None
        self._file: IO[bytes] | None = None
        self._pending = b""
        request.notifyFinish().addBoth(self._finished)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._finished(None)

    def _finished(self, result: object) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if waiter is not None:
            waiter.callback(None)

    def _wait(self, timeout: float | None) -> Deferred[None]:
        """Until L{_wake} (a change, a resume, the client gone), or C{timeout} seconds."""
        self._waiter = Deferred()
        if timeout is not None:
            self._timer = self.clock.callLater(timeout, self._wake)
        return self._waiter

    # Reading

    def _open(self) -> bool:
        """Open the log's current file; False (and an error for the client) if it cannot."""
        path = self.path
        if not os.path.lexists(path):
            self.request.write(
                f'failed to try resolving symlinks in path "{path}": '
                f"lstat {path}: no such file or directory".encode()
            )
            return False
        real = os.path.realpath(path)
        try:
            self._file = open(real, "rb")  # noqa: SIM115 -- closed in run's finally
        except OSError as e:
            self.request.write(
                f'failed to open log file "{real}": open {real}: {_go_error(e)}'.encode()
            )
            return False
        return True

    def _reopen(self) -> bool:
        """Whether the path now names another file (rotated), which is then read from its start."""
        assert self._file is not None
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        held = os.fstat(self._file.fileno())
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return False
        try:
            replacement = open(os.path.realpath(self.path), "rb")  # noqa: SIM115
        except OSError:
            return False
        self._file.close()
        self._file = replacement
        self._unwatch()
        return True

    def _unwatch(self) -> None:
        if self._watching is not None:
            self._watching.loseConnection()
            self._watching = None

    def _send(self, data: bytes, final: bool = False) -> None:
        """Pass the complete lines of C{data} (all of it if C{final}) through the filter."""
        lines = (self._pending + data).split(b"\n")
        last = lines.pop()
        out = [self.filter.feed(line + b"\n") for line in lines]
        self._pending = b"" if final else last
        if final and last:
            # As the kubelet: an unfinished last line is sent all the same.
            out.append(self.filter.feed(last))
        sent = b"".join(out)
        if sent and not self.gone:
            self.request.write(sent)

    async def run(self, running: Callable[[], Any]) -> None:
        """
        Copy the log until it ends (not following, or the container no
        longer runs), the filter is done, or the client goes.

        :param running: fires with whether the container still runs.
        """
        if not self._open():
            return
        file = self._file
        assert file is not None
        try:
            size = os.fstat(file.fileno()).st_size

            def read_at(offset: int, length: int) -> bytes:
                file.seek(offset)
                return file.read(length)

            file.seek(tail_start(size, read_at, self.options.tail))
            await self._copy(running)
        finally:
            self._unwatch()
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            if self._file is not None:
                self._file.close()

    async def _copy(self, running: Callable[[], Any]) -> None:
        found = True
        read = 0
        while not self.gone and not self.filter.done:
            if self._paused:
                await self._wait(None)
                continue
            assert self._file is not None
            chunk = self._file.read(CHUNK)
            if chunk:
                self._send(chunk)
                read += len(chunk)
                if read >= SLICE:
                    # Let the reactor serve others between slices of a long log.
                    read = 0
                    await self._wait(0)
                continue
            if not self.options.follow:
                self._send(b"", final=True)
                return
            if not found:
                return
            if self._reopen():
                continue
            found = bool(await running())
            if not found or self.gone:
                continue
            if self.watch is not None and self._watching is None:
                self._watching = self.watch(os.path.realpath(self.path), self._wake)
                # A change between the read and the watch would be missed: read once more.
                continue
            await self._wait(FORCE_CHECK)
