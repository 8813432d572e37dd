"""
The CRI side of the kubelet without containerd: the errors' words, image
names, the bridge from gRPC's futures to Deferreds, the client's failures
when the runtime is absent or silent, and the in-memory runtime the pod
worker's tests run on.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.client import (
    CRIClient,
    channel_target,
    deferred_from_future,
    describe_error,
)
from k3stw.kubelet.cri.memory import MemoryRuntime, Program
from k3stw.kubelet.cri.runtime import CRIError, Runtime, go_code, normalize_image

reactor = cast(IReactorThreads, _reactor)
SOCKET = "unix:///run/k3s/containerd/containerd.sock"


class ErrorTests(SynchronousTestCase):
    def test_error_names_call_socket_and_code_as_the_kubelet_logs_it(self) -> None:
        error = CRIError("RunPodSandbox", SOCKET, "NOT_FOUND", "sandbox not found")
        self.assertEqual(
            str(error),
            "CRI RunPodSandbox on unix:///run/k3s/containerd/containerd.sock failed: "
            "rpc error: code = NotFound desc = sandbox not found",
        )
        self.assertTrue(error.not_found)
        self.assertFalse(error.unavailable)

    def test_go_names_of_status_codes(self) -> None:
        self.assertEqual(go_code("DEADLINE_EXCEEDED"), "DeadlineExceeded")
        self.assertEqual(go_code("CANCELLED"), "Canceled")
        self.assertEqual(go_code("UNAVAILABLE"), "Unavailable")

    def test_other_exceptions_become_unknown(self) -> None:
        error = describe_error("Version", SOCKET, ValueError("bad"))
        self.assertEqual((error.method, error.code, error.details), ("Version", "UNKNOWN", "bad"))

    def test_endpoints(self) -> None:
        self.assertEqual(channel_target("/run/x.sock"), "unix:///run/x.sock")
        self.assertEqual(channel_target(SOCKET), SOCKET)
        with self.assertRaises(ValueError) as refused:
            channel_target("tcp://127.0.0.1:1")
        self.assertIn("unix:///path/to/socket", str(refused.exception))


class ImageNameTests(SynchronousTestCase):
    def test_docker_normalisation(self) -> None:
        for given, normal in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("rancher/mirrored-pause:3.6", "docker.io/rancher/mirrored-pause:3.6"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("127.0.0.1:5000/x/y", "127.0.0.1:5000/x/y:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
        ]:
            self.assertEqual(normalize_image(given), normal, given)


def _now(f: object, *args: object) -> None:
    """A call_from_thread for tests that run on one thread."""
    f(*args)  # type: ignore[operator]


class FutureBridgeTests(SynchronousTestCase):
    def describe(self, error: BaseException) -> Exception:
        return describe_error("Version", SOCKET, error)

    def test_result_fires_the_deferred(self) -> None:
        future: Future[str] = Future()
        done = deferred_from_future(future, _now, self.describe)
        self.assertNoResult(done)
        future.set_result("v1")
        self.assertEqual(self.successResultOf(done), "v1")

    def test_exception_is_described(self) -> None:
        future: Future[str] = Future()
        done = deferred_from_future(future, _now, self.describe)
        future.set_exception(OSError("gone"))
        error = self.failureResultOf(done, CRIError).value
        self.assertEqual(str(error).split(" failed: ")[0], f"CRI Version on {SOCKET}")

    def test_delivered_through_call_from_thread(self) -> None:
        queued: list[tuple[object, tuple[object, ...]]] = []
        future: Future[str] = Future()
        future.set_result("early")
        done = deferred_from_future(future, lambda f, *a: queued.append((f, a)), self.describe)
        self.assertNoResult(done)
        [(deliver, args)] = queued
        deliver(*args)  # type: ignore[operator]
        self.assertEqual(self.successResultOf(done), "early")

    def test_cancelling_cancels_the_future(self) -> None:
        future: Future[str] = Future()
        done = deferred_from_future(future, _now, self.describe)
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertTrue(future.cancelled())


class ClientFailureTests(TestCase):
    """A real gRPC channel to a runtime that is not there, or does not answer."""

    def short_directory(self) -> Path:
        """A directory whose sockets' paths fit AF_UNIX's 108 bytes."""
        directory = Path(tempfile.mkdtemp(prefix="k3stw-cri-"))
        self.addCleanup(shutil.rmtree, directory)
        return directory

    def test_missing_socket_is_unavailable_naming_the_call_and_socket(self) -> Deferred[None]:
        path = self.short_directory() / "containerd.sock"
        client = CRIClient(reactor, f"unix://{path}", timeout=5)
        self.addCleanup(client.close)

        async def check() -> None:
            with self.assertRaises(CRIError) as failed:
                await client.run_pod_sandbox(api.PodSandboxConfig())
            error = failed.exception
            self.assertTrue(error.unavailable, str(error))
            self.assertTrue(
                str(error).startswith(f"CRI RunPodSandbox on unix://{path} failed: "), str(error)
            )

        return Deferred.fromCoroutine(check())

    def test_silent_runtime_exceeds_the_deadline(self) -> Deferred[None]:
        directory = self.short_directory()
        silent = socket.socket(socket.AF_UNIX)
        self.addCleanup(silent.close)
        silent.bind(str(directory / "s.sock"))
        silent.listen(1)
        client = CRIClient(reactor, str(directory / "s.sock"), timeout=0.3)
        self.addCleanup(client.close)

        async def check() -> None:
            with self.assertRaises(CRIError) as failed:
                await client.version()
            self.assertEqual(failed.exception.method, "Version")
            self.assertIn(failed.exception.code, ("DEADLINE_EXCEEDED", "UNAVAILABLE"))

        return Deferred.fromCoroutine(check())


def _sandbox_config(name: str = "web", uid: str = "u1") -> api.PodSandboxConfig:
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        log_directory=f"/var/log/pods/default_{name}_{uid}",
        labels={"io.kubernetes.pod.uid": uid},
    )


def _container_config(name: str = "app", image: str = "busybox") -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name),
        image=api.ImageSpec(image=image),
        log_path=f"{name}/0.log",
    )


class MemoryRuntimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runtime = MemoryRuntime(self.clock)
        self.runtime.add_image("busybox")
        self.config = _sandbox_config()

    def start(self, name: str = "app") -> tuple[str, str]:
        r = self.runtime
        sandbox = self.successResultOf(r.run_pod_sandbox(self.config))
        container = self.successResultOf(
            r.create_container(sandbox, _container_config(name), self.config)
        )
        self.successResultOf(r.start_container(container))
        return sandbox, container

    def status(self, container: str) -> api.ContainerStatus:
        return self.successResultOf(self.runtime.container_status(container))

    def test_is_a_runtime(self) -> None:
        runtime: Runtime = self.runtime
        self.assertEqual(self.successResultOf(runtime.version()).runtime_name, "containerd")

    def test_container_lifecycle_and_times(self) -> None:
        r = self.runtime
        self.clock.advance(100)
        sandbox = self.successResultOf(r.run_pod_sandbox(self.config))
        container = self.successResultOf(
            r.create_container(sandbox, _container_config(), self.config)
        )
        self.assertEqual(self.status(container).state, api.CONTAINER_CREATED)
        self.clock.advance(1)
        self.successResultOf(r.start_container(container))
        status = self.status(container)
        self.assertEqual(status.state, api.CONTAINER_RUNNING)
        self.assertEqual(status.started_at, 101 * 10**9)
        self.assertEqual(status.log_path, "/var/log/pods/default_web_u1/app/0.log")
        self.assertEqual(status.image.image, "docker.io/library/busybox:latest")
        self.assertTrue(status.image_ref.startswith("docker.io/library/busybox@sha256:"))
        self.clock.advance(1)
        self.successResultOf(r.stop_container(container, 30))
        status = self.status(container)
        self.assertEqual((status.state, status.exit_code), (api.CONTAINER_EXITED, 143))
        self.assertEqual((status.finished_at, status.reason), (102 * 10**9, "Error"))
        ip = self.successResultOf(r.pod_sandbox_status(sandbox)).network.ip
        self.assertEqual(ip, "10.42.0.2")

    def test_program_exits_by_itself(self) -> None:
        self.runtime.programs["app"] = Program(runs_for=5, exit_code=0)
        _, container = self.start()
        self.clock.advance(5)
        status = self.status(container)
        self.assertEqual((status.state, status.reason), (api.CONTAINER_EXITED, "Completed"))

    def test_process_ignoring_sigterm_is_killed_after_the_timeout(self) -> None:
        self.runtime.programs["app"] = Program(term_exit_code=None)
        _, container = self.start()
        stopped = self.runtime.stop_container(container, 10)
        self.clock.advance(9)
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(self.status(container).exit_code, 137)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exit_set_by_the_test(self) -> None:
        _, container = self.start()
        self.runtime.exit(container, 137, reason="OOMKilled")
        status = self.status(container)
        self.assertEqual((status.exit_code, status.reason), (137, "OOMKilled"))

    def test_not_found_and_idempotent_removal(self) -> None:
        r = self.runtime
        error = self.failureResultOf(r.container_status("nope"), CRIError).value
        self.assertTrue(error.not_found)
        self.assertEqual(error.method, "ContainerStatus")
        self.failureResultOf(r.pod_sandbox_status("nope"), CRIError)
        self.successResultOf(r.remove_container("nope"))
        self.successResultOf(r.remove_pod_sandbox("nope"))

    def test_start_twice_is_refused(self) -> None:
        _, container = self.start()
        error = self.failureResultOf(self.runtime.start_container(container), CRIError).value
        self.assertIn("container is in CONTAINER_RUNNING state", error.details)

    def test_names_are_reserved_per_attempt(self) -> None:
        sandbox, _ = self.start()
        error = self.failureResultOf(
            self.runtime.create_container(sandbox, _container_config(), self.config), CRIError
        ).value
        self.assertIn("failed to reserve container name", error.details)

    def test_missing_image_and_pull(self) -> None:
        r = self.runtime
        sandbox = self.successResultOf(r.run_pod_sandbox(self.config))
        error = self.failureResultOf(
            r.create_container(sandbox, _container_config(image="nginx"), self.config), CRIError
        ).value
        self.assertTrue(error.not_found)
        self.failureResultOf(r.pull_image("nginx"), CRIError)
        r.registry["docker.io/library/nginx:latest"] = 5
        ref = self.successResultOf(r.pull_image("nginx"))
        self.assertTrue(ref.startswith("docker.io/library/nginx@sha256:"))
        self.assertIsNotNone(self.successResultOf(r.image_status("nginx:latest")))

    def test_stop_sandbox_kills_its_containers_and_remove_needs_stop(self) -> None:
        r = self.runtime
        sandbox, container = self.start()
        self.failureResultOf(r.remove_pod_sandbox(sandbox), CRIError)
        self.successResultOf(r.stop_pod_sandbox(sandbox))
        self.assertEqual(self.status(container).exit_code, 137)
        self.successResultOf(r.remove_pod_sandbox(sandbox))
        self.assertEqual(self.successResultOf(r.list_containers()), [])

    def test_filters(self) -> None:
        r = self.runtime
        sandbox, container = self.start()
        running = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
        self.assertEqual(
            [c.id for c in self.successResultOf(r.list_containers(running))], [container]
        )
        exited = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_EXITED))
        self.assertEqual(self.successResultOf(r.list_containers(exited)), [])
        by_uid = api.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": "u1"})
        self.assertEqual(
            [s.id for s in self.successResultOf(r.list_pod_sandboxes(by_uid))], [sandbox]
        )

    def test_injected_failures_and_unavailable_runtime(self) -> None:
        r = self.runtime
        r.fail("RunPodSandbox", "boom")
        self.assertEqual(
            self.failureResultOf(r.run_pod_sandbox(self.config), CRIError).value.details, "boom"
        )
        self.successResultOf(r.run_pod_sandbox(self.config))
        r.available = False
        self.assertTrue(self.failureResultOf(r.version(), CRIError).value.unavailable)

    def test_exec_sync(self) -> None:
        _, container = self.start()
        self.runtime.exec_handler = lambda _id, cmd: (1, b"", " ".join(cmd).encode())
        result = self.successResultOf(self.runtime.exec_sync(container, ["cat", "/x"], 1))
        self.assertEqual((result.exit_code, result.stderr), (1, b"cat /x"))
