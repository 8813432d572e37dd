"""
Container logs on the kubelet: the CRI log format, the options of
``/containerLogs``, which instance a request reads, following a log on a
fake clock, and rotation in a temporary directory.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from k3stw.kubelet.api import kubelet_routes
from k3stw.kubelet.config import NodeFlagError, parse_kubelet_args
from k3stw.kubelet.containerlogs import (
    LogFilter,
    LogOptions,
    LogQueryError,
    LogRecord,
    container_log_id,
    format_timestamp,
    parse_log_options,
    parse_record,
    tail_start,
)
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.memory import MemoryRuntime
from k3stw.kubelet.cri.runtime import Runtime
from k3stw.kubelet.logrotation import LogRotation, excess_logs, rotation_job, unused_logs
from k3stw.kubelet.logstream import FORCE_CHECK, ContainerLogs
from k3stw.machinery.objects import Object
from tests.support.kubelet import no_summary

#: 2026-12-06T10:00:00Z
T0 = 1796551200
NANO = 1_000_000_000


def line(seconds: float, text: str, stream: str = "stdout", tag: str = "F") -> bytes:
    stamp = format_timestamp(int(seconds * NANO)).decode()
    return f"{stamp} {stream} {tag} {text}\n".encode()


class RecordTests(SynchronousTestCase):
    def test_full_and_partial_records(self) -> None:
        """F keeps its newline; P drops it, so the next record goes on with the line."""
        full = parse_record(b"2016-10-06T00:17:09.669794202Z stdout F hello\n")
        self.assertEqual(
            full, LogRecord(1475713029 * NANO + 669794202, 0, b"stdout", False, b"hello\n")
        )
        partial = parse_record(b"2016-10-06T00:17:09.669794203Z stderr P:more hel\n")
        assert partial is not None
        self.assertEqual(
            (partial.stream, partial.partial, partial.content), (b"stderr", True, b"hel")
        )

    def test_offsets_and_short_fractions(self) -> None:
        """A time with an offset is the same instant; written back with that offset."""
        record = parse_record(b"2016-10-06T02:17:09.5+02:00 stdout F x\n")
        assert record is not None
        self.assertEqual(record.nanos, 1475713029 * NANO + 500_000_000)
        self.assertEqual(
            format_timestamp(record.nanos, record.offset), b"2016-10-06T02:17:09.500000000+02:00"
        )
        self.assertEqual(format_timestamp(1475713029 * NANO), b"2016-10-06T00:17:09.000000000Z")

    def test_lines_that_are_not_records(self) -> None:
        for bad in (
            b"",
            b"garbage\n",
            b"2016-10-06T00:17:09Z stdin F x\n",
            b"2016-10-06T00:17:09Z stdout\n",
            b"2016-13-06T00:17:09Z stdout F x\n",
            b"yesterday stdout F x\n",
        ):
            self.assertIsNone(parse_record(bad), bad)


class OptionTests(SynchronousTestCase):
    def options(self, **query: str) -> LogOptions:
        return parse_log_options({k.encode(): [v.encode()] for k, v in query.items()}, T0)

    def refused(self, **query: str) -> tuple[int, str]:
        error = self.assertRaises(LogQueryError, self.options, **query)
        return error.code, error.message

    def test_what_the_api_server_sends(self) -> None:
        options = self.options(
            follow="true", timestamps="true", tailLines="5", limitBytes="10", sinceSeconds="60"
        )
        self.assertEqual(
            options,
            LogOptions(follow=True, timestamps=True, tail=5, limit=10, since=(T0 - 60) * NANO),
        )
        self.assertTrue(self.options(previous="1").previous)

    def test_legacy_tail(self) -> None:
        self.assertEqual(self.options(tail="3").tail, 3)
        self.assertIsNone(self.options(tail="all").tail)

    def test_the_later_of_since_time_and_since_seconds(self) -> None:
        """As kube's NewLogOptions; a sinceTime keeps whole seconds."""
        self.assertEqual(self.options(sinceTime="2026-12-06T09:00:00.7Z").since, (T0 - 3600) * NANO)

    def test_undecodable_and_invalid_queries(self) -> None:
        decode = (400, '{"message": "Unable to decode query."}')
        invalid = (422, '{"message": "Invalid request."}')
        self.assertEqual(self.refused(tailLines="x"), decode)
        self.assertEqual(self.refused(follow="yes"), decode)
        self.assertEqual(self.refused(sinceTime="today"), decode)
        self.assertEqual(self.refused(tailLines="-1"), invalid)
        self.assertEqual(self.refused(limitBytes="0"), invalid)
        self.assertEqual(self.refused(sinceSeconds="0"), invalid)
        self.assertEqual(self.refused(sinceSeconds="5", sinceTime="2026-12-06T09:00:00Z"), invalid)
        self.assertEqual(self.refused(stream="Stdout"), invalid)


def status(state: dict[str, Any], last: dict[str, Any] | None = None, cid: str = "") -> Object:
    entry: dict[str, Any] = {"name": "c", "state": state, "containerID": cid}
    if last is not None:
        entry["lastState"] = last
    return {"containerStatuses": [entry]}


class InstanceTests(SynchronousTestCase):
    """Which container instance a request reads, and the kubelet's words when none."""

    def refusal(self, pod_status: Object, previous: bool = False) -> str:
        error = self.assertRaises(LogQueryError, container_log_id, "p", pod_status, "c", previous)
        self.assertEqual(error.code, 400)
        return str(error.message)

    def test_running_and_previous(self) -> None:
        last = {"terminated": {"containerID": "containerd://old"}}
        running = status({"running": {}}, last, "containerd://new")
        self.assertEqual(container_log_id("p", running, "c", False), "containerd://new")
        self.assertEqual(container_log_id("p", running, "c", True), "containerd://old")

    def test_no_previous_instance(self) -> None:
        self.assertEqual(
            self.refusal(status({"running": {}}, cid="containerd://x"), previous=True),
            'previous terminated container "c" in pod "p" not found',
        )

    def test_waiting(self) -> None:
        self.assertEqual(
            self.refusal(status({"waiting": {"reason": "ContainerCreating"}})),
            'container "c" in pod "p" is waiting to start: ContainerCreating',
        )
        self.assertEqual(
            self.refusal(status({"waiting": {"reason": "ImagePullBackOff"}})),
            'container "c" in pod "p" is waiting to start: trying and failing to pull image',
        )
        self.assertEqual(
            self.refusal(status({"waiting": {"reason": "ErrImagePull"}})),
            'container "c" in pod "p" is waiting to start: image can\'t be pulled',
        )
        self.assertEqual(
            self.refusal(status({})), 'container "c" in pod "p" is waiting to start - no logs yet'
        )

    def test_crash_looping_reads_the_last_instance(self) -> None:
        last = {"terminated": {"containerID": "containerd://old"}}
        waiting = status({"waiting": {"reason": "CrashLoopBackOff"}}, last)
        self.assertEqual(container_log_id("p", waiting, "c", False), "containerd://old")
        ended = status({"terminated": {"containerID": "containerd://done"}}, last)
        self.assertEqual(container_log_id("p", ended, "c", False), "containerd://done")
        self.assertEqual(
            self.refusal(status({"terminated": {"containerID": ""}})),
            'container "c" in pod "p" is terminated',
        )

    def test_not_in_the_status(self) -> None:
        self.assertEqual(self.refusal({}), 'container "c" in pod "p" is not available')


class TailAndFilterTests(SynchronousTestCase):
    def test_tail_start(self) -> None:
        """The start of the last N lines; an unfinished last line does not count."""
        data = b"a\nbb\nccc\n" * 300 + b"tail"

        def at(offset: int, length: int) -> bytes:
            return data[offset : offset + length]

        self.assertEqual(data[tail_start(len(data), at, 2) :], b"bb\nccc\ntail")
        self.assertEqual(data[tail_start(len(data), at, 0) :], b"tail")
        self.assertEqual(tail_start(len(data), at, 10_000), 0)
        self.assertEqual(tail_start(len(data), at, None), 0)
        self.assertEqual(tail_start(0, at, 3), 0)

    def test_since_timestamps_and_limit(self) -> None:
        records = [line(T0, "old"), line(T0 + 10, "new"), line(T0 + 11, "par", tag="P")]
        kept = LogFilter(LogOptions(since=(T0 + 5) * NANO))
        self.assertEqual(b"".join(kept.feed(r) for r in records), b"new\npar")
        stamped = LogFilter(LogOptions(timestamps=True, limit=40))
        out = b"".join(stamped.feed(r) for r in records)
        self.assertEqual(out, b"2026-12-06T10:00:00.000000000Z old\n2026-")
        self.assertTrue(stamped.done)

    def test_tail_counts_records_unless_following(self) -> None:
        records = [line(T0 + i, str(i)) for i in range(5)]
        counted = LogFilter(LogOptions(tail=2))
        self.assertEqual(b"".join(counted.feed(r) for r in records), b"0\n1\n")
        following = LogFilter(LogOptions(tail=2, follow=True))
        self.assertEqual(len(b"".join(following.feed(r) for r in records).splitlines()), 5)


class _Request(DummyRequest):
    """A request whose producer is kept, not driven (the stream is a push producer)."""

    def __init__(self, query: dict[str, str] | None = None) -> None:
        super().__init__([])
        self.args = {k.encode(): [v.encode()] for k, v in (query or {}).items()}
        self.producer: object = None
        self._disconnected = False

    def registerProducer(self, prod: object, s: bool) -> None:
        self.producer = prod

    def unregisterProducer(self) -> None:
        # As twisted.web's: the channel it goes through is gone with the client.
        if self._disconnected:
            raise AttributeError("'NoneType' object has no attribute 'unregisterProducer'")
        self.producer = None

    def processingFailed(self, reason: Failure) -> None:
        # The client went away: twisted.web marks it so (and drops the channel).
        self._disconnected = True
        super().processingFailed(reason)

    @property
    def body(self) -> bytes:
        return b"".join(self.written)


class _Host:
    def __init__(self, runtime: Runtime, pods: dict[str, Object]) -> None:
        self.runtime = runtime
        self.pods = pods

    def pod_by_name(self, namespace: str, name: str) -> Object | None:
        return self.pods.get(f"{namespace}/{name}")


class _NodeCase(SynchronousTestCase):
    """A MemoryRuntime with one sandbox whose logs go to a temporary directory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.dir = Path(tempfile.mkdtemp(prefix="k3stw-logs-"))
        self.runtime = MemoryRuntime(self.clock)
        self.runtime.add_image("busybox")
        sandbox = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="p", namespace="default", uid="u"),
            log_directory=str(self.dir),
        )
        self.sandbox = self.successResultOf(self.runtime.run_pod_sandbox(sandbox))

    def container(self, attempt: int) -> tuple[str, Path]:
        """Start instance C{attempt} of container c; its ID and its (empty) log."""
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="c", attempt=attempt),
            image=api.ImageSpec(image="busybox"),
            log_path=f"c/{attempt}.log",
        )
        sandbox_config = self.runtime.sandboxes[self.sandbox].config
        cid = self.successResultOf(
            self.runtime.create_container(self.sandbox, config, sandbox_config)
        )
        self.runtime.start_container(cid)
        path = self.dir / "c" / f"{attempt}.log"
        path.parent.mkdir(exist_ok=True)
        path.touch()
        return cid, path


class _LogsCase(_NodeCase):
    """The log endpoint on a MemoryRuntime whose log files are in a temporary directory."""

    def setUp(self) -> None:
        super().setUp()
        self.pods: dict[str, Object] = {}
        self.logs = ContainerLogs(self.clock, lambda: _Host(self.runtime, self.pods))

    def pod(self, pod_status: Object) -> None:
        self.pods["default/p"] = {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c"}]},
            "status": pod_status,
        }

    def get(self, container: str = "c", **query: str) -> tuple[_Request, object]:
        request = _Request(query)
        return request, self.logs.render(cast(Request, request), "default", "p", container)


class StreamTests(_LogsCase):
    """Reading, following and the refusals of ``/containerLogs``."""

    def test_reads_the_log_of_the_running_instance(self) -> None:
        cid, path = self.container(0)
        path.write_bytes(line(T0, "one") + line(T0, "tw", tag="P") + line(T0, "o"))
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request, answer = self.get()
        self.assertEqual(answer, NOT_DONE_YET)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.body, b"one\ntwo\n")
        self.assertEqual(request.finished, 1)
        self.assertIsNone(request.producer)

    def test_previous_reads_the_last_terminated_instance(self) -> None:
        old, old_path = self.container(0)
        old_path.write_bytes(line(T0, "before the crash"))
        self.runtime.exit(old, 1)
        new, new_path = self.container(1)
        new_path.write_bytes(line(T0, "after"))
        last = {"terminated": {"containerID": f"containerd://{old}"}}
        self.pod(status({"running": {}}, last, f"containerd://{new}"))
        self.assertEqual(self.get(previous="true")[0].body, b"before the crash\n")
        self.assertEqual(self.get()[0].body, b"after\n")

    def test_refusals_in_the_kubelets_words(self) -> None:
        request, answer = self.get()
        self.assertEqual((request.responseCode, answer), (404, b'pod "p" does not exist'))
        self.pod(status({"waiting": {"reason": "ContainerCreating"}}))
        request, answer = self.get("d")
        self.assertEqual(
            (request.responseCode, answer), (404, b'container "d" not found in pod "p"')
        )
        request, answer = self.get()
        self.assertEqual(
            (request.responseCode, answer),
            (400, b'container "c" in pod "p" is waiting to start: ContainerCreating'),
        )
        request, answer = self.get(tailLines="-1")
        self.assertEqual((request.responseCode, answer), (422, b'{"message": "Invalid request."}'))

    def test_errors_once_streaming_go_in_the_body(self) -> None:
        """As the kubelet's, after its first (empty) write: a 200 with the error as text."""
        self.pod(status({"running": {}}, cid="containerd://gone"))
        request, _ = self.get()
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.body, b"unable to retrieve container logs for containerd://gone")
        cid, path = self.container(0)
        path.unlink()
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        self.assertEqual(
            self.get()[0].body,
            f'failed to try resolving symlinks in path "{path}": lstat {path}: '
            "no such file or directory".encode(),
        )

    def test_follow_streams_new_lines_until_the_container_ends(self) -> None:
        """Each look (every second on this clock) sends what was written; an exit ends it."""
        cid, path = self.container(0)
        path.write_bytes(line(T0, "first"))
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request, _ = self.get(follow="true")
        self.assertEqual((request.body, request.finished), (b"first\n", 0))
        with path.open("ab") as log:
            log.write(line(T0 + 1, "sec"))
            log.flush()
            log.write(b"2026-12-06T10:00:01Z stdout F ond\n"[:20])
            log.flush()
            self.clock.advance(FORCE_CHECK)
            # An unfinished line waits for its end.
            self.assertEqual(request.body, b"first\nsec\n")
            log.write(b"2026-12-06T10:00:01Z stdout F ond\n"[20:])
        self.runtime.exit(cid, 0)
        self.clock.advance(FORCE_CHECK)
        self.assertEqual((request.body, request.finished), (b"first\nsec\nond\n", 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_follow_goes_on_in_the_rotated_log(self) -> None:
        cid, path = self.container(0)
        path.write_bytes(line(T0, "a"))
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request, _ = self.get(follow="true", tailLines="0")
        self.assertEqual(request.body, b"")
        with path.open("ab") as log:
            log.write(line(T0, "b"))
        os.rename(path, f"{path}.20261206-100000")
        self.runtime.reopen_container_log(cid)
        with path.open("ab") as log:
            log.write(line(T0, "c"))
        self.clock.advance(FORCE_CHECK)
        self.assertEqual(request.body, b"b\nc\n")
        self.runtime.exit(cid, 0)
        self.clock.advance(FORCE_CHECK)
        self.assertEqual(request.finished, 1)

    def test_follow_ends_when_the_client_goes(self) -> None:
        cid, path = self.container(0)
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request, _ = self.get(follow="true")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with path.open("ab") as log:
            log.write(line(T0, "unread"))
        self.clock.advance(FORCE_CHECK)
        self.assertEqual(request.body, b"")

    def test_follow_wakes_on_a_change(self) -> None:
        """With a file watch, a write is sent at once, not at the next second."""
        watches: list[Any] = []

        class _Watch:
            def loseConnection(self) -> None:
                watches.remove(self)

        def watch(path: str, changed: Any) -> _Watch:
            self.changed = changed
            found = _Watch()
            watches.append(found)
            return found

        self.logs.watch = watch
        cid, path = self.container(0)
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request, _ = self.get(follow="true")
        self.assertEqual(len(watches), 1)
        with path.open("ab") as log:
            log.write(line(T0, "now"))
        self.changed()
        self.assertEqual(request.body, b"now\n")
        self.runtime.exit(cid, 0)
        self.changed()
        self.assertEqual((request.finished, watches), (1, []))

    def test_a_paused_client_stops_the_reading(self) -> None:
        cid, path = self.container(0)
        path.write_bytes(line(T0, "x"))
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        request = _Request({"follow": "true"})
        original = request.write

        def pausing(data: bytes) -> None:
            original(data)
            if data and request.producer is not None:
                request.producer.pauseProducing()  # type: ignore[attr-defined]

        request.write = pausing  # type: ignore[method-assign]
        self.logs.render(cast(Request, request), "default", "p", "c")
        with path.open("ab") as log:
            log.write(line(T0, "y"))
        self.clock.advance(FORCE_CHECK * 5)
        self.assertEqual(request.body, b"x\n")
        request.producer.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(request.body, b"x\ny\n")
        request.producer.resumeProducing()  # type: ignore[attr-defined]
        self.runtime.exit(cid, 0)
        self.clock.advance(FORCE_CHECK)
        self.assertEqual(request.finished, 1)


class RouteTests(_LogsCase):
    """``/containerLogs/<namespace>/<pod>/<container>`` in the kubelet's routes."""

    def route(self, path: bytes, method: bytes = b"GET", logs: bool = True) -> _Request:
        root = kubelet_routes(None, no_summary, self.logs if logs else None)
        request = _Request()
        request.postpath = path.lstrip(b"/").split(b"/")
        request.method = method
        answer = getChildForRequest(root, request).render(request)
        if isinstance(answer, bytes):
            request.write(answer)
        return request

    def test_the_route(self) -> None:
        cid, path = self.container(0)
        path.write_bytes(line(T0, "routed"))
        self.pod(status({"running": {}}, cid=f"containerd://{cid}"))
        self.assertEqual(self.route(b"/containerLogs/default/p/c").body, b"routed\n")
        # Escaped segments are the names they spell.
        self.assertEqual(self.route(b"/containerLogs/default/%70/c").body, b"routed\n")
        for wrong in (b"/containerLogs/default/p", b"/containerLogs/default/p/c/x"):
            request = self.route(wrong)
            self.assertEqual((request.responseCode, request.body), (404, b"404 page not found\n"))
        self.assertEqual(self.route(b"/containerLogs/default/p/c", b"POST").responseCode, 405)
        self.assertEqual(
            self.route(b"/containerLogs/default//c").body, b'{"message": "Missing podID."}'
        )

    def test_a_node_without_a_runtime(self) -> None:
        request = self.route(b"/containerLogs/default/p/c", logs=False)
        self.assertEqual(
            (request.responseCode, request.body),
            (501, b"not implemented: this node has no container runtime yet\n"),
        )


class RotationTests(_NodeCase):
    def setUp(self) -> None:
        super().setUp()
        self.cid, self.log = self.container(0)
        self.log.write_bytes(b"x" * 100)

        def compress(path: str) -> Deferred[None]:
            from k3stw.kubelet.logrotation import compress_log

            compress_log(path)
            return Deferred.fromCoroutine(_nothing())

        self.rotation = LogRotation(self.clock, self.runtime, 100, 3, compress=compress)

    def files(self) -> list[str]:
        return sorted(p.name for p in self.log.parent.iterdir())

    def stamp(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock.seconds()))

    def test_unused_and_excess(self) -> None:
        self.assertEqual(
            unused_logs(["0.log.1.gz", "0.log.1", "0.log.2", "0.log.3.tmp"]),
            (["0.log.1.gz", "0.log.2"], ["0.log.1", "0.log.3.tmp"]),
        )
        self.assertEqual(excess_logs(["b", "a", "c"], 4), (["a"], ["b", "c"]))
        self.assertEqual(excess_logs(["a"], 2), (["a"], []))

    def test_rotates_compresses_and_keeps_at_most_max_files(self) -> None:
        job = rotation_job(self.rotation)
        job.startService()
        self.clock.advance(10)
        first = f"0.log.{self.stamp()}"
        self.assertEqual(self.files(), ["0.log", first])
        self.assertEqual(self.log.read_bytes(), b"")
        self.assertIn(("ReopenContainerLog", self.cid), self.runtime.calls)
        self.log.write_bytes(b"y" * 100)
        self.clock.advance(10)
        second = f"0.log.{self.stamp()}"
        self.assertEqual(self.files(), ["0.log", first + ".gz", second])
        self.assertEqual(
            gzip.decompress((self.log.parent / (first + ".gz")).read_bytes()), b"x" * 100
        )
        self.log.write_bytes(b"z" * 100)
        self.clock.advance(10)
        # Three files at most: the current log, the one just rotated, one older.
        self.assertEqual(self.files(), ["0.log", second + ".gz", f"0.log.{self.stamp()}"])
        job.stopService()

    def test_small_logs_and_stopped_containers_are_left_alone(self) -> None:
        self.log.write_bytes(b"x" * 99)
        self.successResultOf(Deferred.fromCoroutine(self.rotation.rotate_all()))
        self.assertEqual(self.files(), ["0.log"])
        self.log.write_bytes(b"x" * 100)
        self.runtime.exit(self.cid, 0)
        self.successResultOf(Deferred.fromCoroutine(self.rotation.rotate_all()))
        self.assertEqual(self.files(), ["0.log"])

    def test_a_failed_reopen_puts_the_log_back(self) -> None:
        self.runtime.fail("ReopenContainerLog", "container is not running")
        self.successResultOf(Deferred.fromCoroutine(self.rotation.rotate_all()))
        self.assertEqual(self.files(), ["0.log"])
        self.assertEqual(self.log.read_bytes(), b"x" * 100)

    def test_one_container_status_per_container(self) -> None:
        """A container's log path is asked for once, not every round."""
        for _ in range(3):
            self.successResultOf(Deferred.fromCoroutine(self.rotation.rotate_all()))
        statuses = [call for call in self.runtime.calls if call[0] == "ContainerStatus"]
        self.assertEqual(len(statuses), 1)

    def test_a_missing_log_is_reopened(self) -> None:
        self.log.unlink()
        self.successResultOf(Deferred.fromCoroutine(self.rotation.rotate_all()))
        self.assertEqual(self.files(), ["0.log"])


async def _nothing() -> None:
    return None


class KubeletArgTests(SynchronousTestCase):
    def test_log_rotation_args(self) -> None:
        args = parse_kubelet_args(["container-log-max-size=1Mi", "--container-log-max-files=3"])
        self.assertEqual((args.container_log_max_size, args.container_log_max_files), (1 << 20, 3))
        defaults = parse_kubelet_args([])
        self.assertEqual(
            (defaults.container_log_max_size, defaults.container_log_max_files), (10 << 20, 5)
        )
        self.assertIn(
            "must be greater than 1",
            str(
                self.assertRaises(NodeFlagError, parse_kubelet_args, ["container-log-max-files=1"])
            ),
        )
        self.assertIn(
            "failed to parse container log max size",
            str(self.assertRaises(NodeFlagError, parse_kubelet_args, ["container-log-max-size=x"])),
        )
