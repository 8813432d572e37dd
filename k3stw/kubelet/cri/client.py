"""
L{CRIClient}: the L{Runtime} of a CRI v1 runtime reached over gRPC (containerd
on C{unix:///run/k3s/containerd/containerd.sock}).

gRPC runs its calls on its own threads.  Each call is started with the stub's
C{future()}, which returns at once; the future's done-callback hands the
outcome to the reactor thread (C{callFromThread}), where it fires the call's
Deferred.  So the reactor never waits on the runtime, and a runtime that is
gone, dies or hangs is one L{CRIError} naming the call and the socket.

This module imports grpc: the kubelet imports it only when it starts its
runtime, so that a server without a node never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorThreads

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError

__all__ = ["DEFAULT_ENDPOINT", "CRIClient", "channel_target", "deferred_from_future"]

#: k3s's containerd socket.
DEFAULT_ENDPOINT = "unix:///run/k3s/containerd/containerd.sock"
#: The kubelet's ``runtimeRequestTimeout`` (2m).
REQUEST_TIMEOUT = 120.0
#: The largest message the kubelet accepts from its runtime (16 MiB, as the kubelet).
MAX_MESSAGE = 16 * 1024 * 1024

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")


class Future(Protocol[T_co]):
    """What C{deferred_from_future} needs of a future (gRPC's and C{concurrent.futures}' alike)."""

    def result(self, timeout: float | None = None) -> T_co: ...

    def cancel(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


def channel_target(endpoint: str) -> str:
    """
    The gRPC target of a runtime endpoint, accepting what
    ``--container-runtime-endpoint`` accepts: C{unix:///path} or a bare
    socket path.

    :raises ValueError: for any other scheme.
    """
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    if endpoint.startswith("unix:"):
        return endpoint
    raise ValueError(
        f"unsupported container runtime endpoint {endpoint!r}: expected unix:///path/to/socket"
    )


def describe_error(method: str, endpoint: str, error: BaseException) -> CRIError:
    """A gRPC failure (or any other) as the L{CRIError} of C{method} on C{endpoint}."""
    if isinstance(error, CRIError):
        return error
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):
        status = code()
        name = getattr(status, "name", None) or str(status)
        return CRIError(method, endpoint, name, str(details() or ""))
    if isinstance(error, CancelledError):
        return CRIError(method, endpoint, "CANCELLED", "the call was cancelled")
    return CRIError(method, endpoint, "UNKNOWN", str(error) or type(error).__name__)


def deferred_from_future(
    future: Future[T],
    call_from_thread: Callable[..., object],
    describe: Callable[[BaseException], Exception],
) -> Deferred[T]:
    """
    A Deferred that fires, on the reactor thread, with C{future}'s outcome.

    :param future: started already; its done-callback may run on any thread
        (or at once, on this one, if it is done).
    :param call_from_thread: runs a call on the reactor thread
        (C{reactor.callFromThread}).
    :param describe: turns the future's exception into the Deferred's.
    :return: cancelling it cancels the future.
    """

    def cancel(_: Deferred[T]) -> None:
        future.cancel()

    done: Deferred[T] = Deferred(canceller=cancel)

    def fire(finished: Future[T]) -> None:
        # The future is done: result() does not wait.
        if finished.cancelled():
            outcome: tuple[bool, Any] = (False, None)
        else:
            try:
                outcome = (True, finished.result())
            except BaseException as e:
                outcome = (False, describe(e))
        call_from_thread(deliver, outcome)

    def deliver(outcome: tuple[bool, Any]) -> None:
        if done.called:
            return  # cancelled from this side already
        ok, value = outcome
        if ok:
            done.callback(value)
        elif value is None:
            done.cancel()
        else:
            done.errback(value)

    future.add_done_callback(fire)
    return done


class _Service:
    """
    One CRI service's calls on a channel, made from its descriptor in the
    generated messages module (when first used), as protoc's stub module
    would make them.
    """

    def __init__(self, channel: grpc.Channel, name: str) -> None:
        self.channel = channel
        self.descriptor = api.DESCRIPTOR.services_by_name[name]
        self._methods: dict[str, Any] = {}

    def method(self, name: str) -> Any:
        """The unary call C{name} (C{RunPodSandbox})."""
        found = self._methods.get(name)
        if found is None:
            method = self.descriptor.methods_by_name[name]
            found = self._methods[name] = self.channel.unary_unary(
                f"/{self.descriptor.full_name}/{name}",
                request_serializer=getattr(api, method.input_type.name).SerializeToString,
                response_deserializer=getattr(api, method.output_type.name).FromString,
            )
        return found


class CRIClient:
    """
    A L{Runtime} over gRPC.

    :param reactor: the outcomes are delivered on its thread.
    :param endpoint: C{unix:///run/k3s/containerd/containerd.sock} or a socket path.
    :param timeout: the deadline of each call (the kubelet's runtimeRequestTimeout);
        an image pull has none.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            channel_target(endpoint),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self._runtime = _Service(self._channel, "RuntimeService")
        self._images = _Service(self._channel, "ImageService")

    def close(self) -> None:
        """Close the channel; calls in flight fail."""
        self._channel.close()

    def _call(
        self,
        stub: _Service,
        method: str,
        request: Any,
        pick: Callable[[Any], R],
        timeout: float | str | None = "default",
    ) -> Deferred[R]:
        deadline = self.timeout if timeout == "default" else timeout
        assert not isinstance(deadline, str)

        def describe(error: BaseException) -> Exception:
            return describe_error(method, self.endpoint, error)

        try:
            future = stub.method(method).future(request, timeout=deadline)
        except Exception as e:  # a closed channel refuses at once
            failed: Deferred[R] = Deferred()
            failed.errback(describe(e))
            return failed
        done = deferred_from_future(future, self.reactor.callFromThread, describe)
        return done.addCallback(pick)

    # RuntimeService

    def version(self) -> Deferred[api.VersionResponse]:
        return self._call(self._runtime, "Version", api.VersionRequest(version="v1"), _same)

    def status(self) -> Deferred[api.StatusResponse]:
        return self._call(self._runtime, "Status", api.StatusRequest(), _same)

    def update_runtime_config(self, pod_cidr: str) -> Deferred[None]:
        config = api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=pod_cidr))
        request = api.UpdateRuntimeConfigRequest(runtime_config=config)
        return self._call(self._runtime, "UpdateRuntimeConfig", request, _nothing)

    def run_pod_sandbox(
        self, config: api.PodSandboxConfig, runtime_handler: str = ""
    ) -> Deferred[str]:
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._call(self._runtime, "RunPodSandbox", request, _pod_sandbox_id)

    def stop_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        request = api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        return self._call(self._runtime, "StopPodSandbox", request, _nothing)

    def remove_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        request = api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        return self._call(self._runtime, "RemovePodSandbox", request, _nothing)

    def pod_sandbox_status(self, sandbox_id: str) -> Deferred[api.PodSandboxStatus]:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        return self._call(self._runtime, "PodSandboxStatus", request, _status)

    def list_pod_sandboxes(
        self, filter: api.PodSandboxFilter | None = None
    ) -> Deferred[list[api.PodSandbox]]:
        request = api.ListPodSandboxRequest(filter=filter)
        return self._call(self._runtime, "ListPodSandbox", request, _items)

    def create_container(
        self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> Deferred[str]:
        request = api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return self._call(self._runtime, "CreateContainer", request, _container_id)

    def start_container(self, container_id: str) -> Deferred[None]:
        request = api.StartContainerRequest(container_id=container_id)
        return self._call(self._runtime, "StartContainer", request, _nothing)

    def stop_container(self, container_id: str, timeout: int) -> Deferred[None]:
        request = api.StopContainerRequest(container_id=container_id, timeout=timeout)
        # The runtime waits the grace period itself; the deadline comes on top (as the kubelet).
        return self._call(
            self._runtime, "StopContainer", request, _nothing, self.timeout + max(timeout, 0)
        )

    def remove_container(self, container_id: str) -> Deferred[None]:
        request = api.RemoveContainerRequest(container_id=container_id)
        return self._call(self._runtime, "RemoveContainer", request, _nothing)

    def list_containers(
        self, filter: api.ContainerFilter | None = None
    ) -> Deferred[list[api.Container]]:
        request = api.ListContainersRequest(filter=filter)
        return self._call(self._runtime, "ListContainers", request, _containers)

    def container_status(self, container_id: str) -> Deferred[api.ContainerStatus]:
        request = api.ContainerStatusRequest(container_id=container_id)
        return self._call(self._runtime, "ContainerStatus", request, _status)

    def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int
    ) -> Deferred[api.ExecSyncResponse]:
        request = api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        deadline = self.timeout + timeout if timeout > 0 else None
        return self._call(self._runtime, "ExecSync", request, _same, deadline)

    def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Deferred[str]:
        request = api.ExecRequest(
            container_id=container_id,
            cmd=list(cmd),
            tty=tty,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        return self._call(self._runtime, "Exec", request, _url)

    def attach(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> Deferred[str]:
        request = api.AttachRequest(
            container_id=container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
        return self._call(self._runtime, "Attach", request, _url)

    def port_forward(self, sandbox_id: str, ports: Sequence[int] = ()) -> Deferred[str]:
        request = api.PortForwardRequest(pod_sandbox_id=sandbox_id, port=list(ports))
        return self._call(self._runtime, "PortForward", request, _url)

    # ImageService

    def list_images(self, filter: api.ImageFilter | None = None) -> Deferred[list[api.Image]]:
        request = api.ListImagesRequest(filter=filter)
        return self._call(self._images, "ListImages", request, _images)

    def image_status(self, image: str) -> Deferred[api.Image | None]:
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image))
        return self._call(self._images, "ImageStatus", request, _image)

    def pull_image(
        self,
        image: str,
        auth: api.AuthConfig | None = None,
        sandbox_config: api.PodSandboxConfig | None = None,
    ) -> Deferred[str]:
        request = api.PullImageRequest(
            image=api.ImageSpec(image=image), auth=auth, sandbox_config=sandbox_config
        )
        return self._call(self._images, "PullImage", request, _image_ref, None)

    def remove_image(self, image: str) -> Deferred[None]:
        request = api.RemoveImageRequest(image=api.ImageSpec(image=image))
        return self._call(self._images, "RemoveImage", request, _nothing)

    def image_fs_info(self) -> Deferred[api.ImageFsInfoResponse]:
        return self._call(self._images, "ImageFsInfo", api.ImageFsInfoRequest(), _same)


def _same(response: T) -> T:
    return response


def _nothing(response: object) -> None:
    return None


def _url(response: api.ExecResponse | api.AttachResponse | api.PortForwardResponse) -> str:
    return response.url


def _pod_sandbox_id(response: api.RunPodSandboxResponse) -> str:
    return response.pod_sandbox_id


def _container_id(response: api.CreateContainerResponse) -> str:
    return response.container_id


def _status(response: Any) -> Any:
    return response.status


def _items(response: api.ListPodSandboxResponse) -> list[api.PodSandbox]:
    return list(response.items)


def _containers(response: api.ListContainersResponse) -> list[api.Container]:
    return list(response.containers)


def _images(response: api.ListImagesResponse) -> list[api.Image]:
    return list(response.images)


def _image(response: api.ImageStatusResponse) -> api.Image | None:
    return response.image if response.HasField("image") else None


def _image_ref(response: api.PullImageResponse) -> str:
    return response.image_ref
