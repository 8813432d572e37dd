"""
What the kubelet asks of a container runtime: L{Runtime}, CRI v1's
RuntimeService and ImageService as Deferred-returning methods over the
generated messages (L{k3stw.kubelet.cri.api_pb2}), and L{CRIError}, the one
error every implementation raises.

Two implementations: L{k3stw.kubelet.cri.client.CRIClient} talks gRPC to
containerd; L{k3stw.kubelet.cri.memory.MemoryRuntime} behaves like containerd
in memory, on a clock, for the pod worker's unit tests.  Nothing here imports
grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from k3stw.kubelet.cri import api_pb2 as api

__all__ = ["CRIError", "Runtime", "go_code", "normalize_image"]

#: gRPC status codes whose Go name is not the Python name in CamelCase.
_GO_CODES = {"OK": "OK", "CANCELLED": "Canceled"}


def go_code(code: str) -> str:
    """A gRPC status code's name as Go prints it (C{NOT_FOUND} -> C{NotFound})."""
    return _GO_CODES.get(code) or "".join(word.capitalize() for word in code.split("_"))


class CRIError(Exception):
    """
    A CRI call failed.  C{str()} names the call, the runtime and the error as
    the kubelet logs it: C{CRI StartContainer on unix:///run/k3s/containerd/containerd.sock
    failed: rpc error: code = NotFound desc = ...}.

    :ivar method: the CRI method (C{RunPodSandbox}).
    :ivar endpoint: the runtime's endpoint.
    :ivar code: the gRPC status code's name (C{NOT_FOUND}, C{UNAVAILABLE},
        C{DEADLINE_EXCEEDED}, C{UNKNOWN}, ...).
    :ivar details: the runtime's message.
    """

    def __init__(self, method: str, endpoint: str, code: str, details: str) -> None:
        super().__init__(method, endpoint, code, details)
        self.method = method
        self.endpoint = endpoint
        self.code = code
        self.details = details

    @property
    def not_found(self) -> bool:
        """The object the call named does not exist."""
        return self.code == "NOT_FOUND"

    @property
    def unavailable(self) -> bool:
        """The runtime could not be reached (not running, socket missing, connection lost)."""
        return self.code == "UNAVAILABLE"

    def __str__(self) -> str:
        return (
            f"CRI {self.method} on {self.endpoint} failed: "
            f"rpc error: code = {go_code(self.code)} desc = {self.details}"
        )


def normalize_image(reference: str) -> str:
    """
    An image reference in the fully qualified form containerd stores and
    reports (Docker's normalisation): C{busybox} ->
    C{docker.io/library/busybox:latest}, C{rancher/mirrored-pause:3.6} ->
    C{docker.io/rancher/mirrored-pause:3.6}; a digest keeps no default tag.
    """
    name, at, digest = reference.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}"
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = "docker.io/library/" + name.removeprefix("docker.io/")
    last = name.rpartition("/")[2]
    if not at and ":" not in last:
        name += ":latest"
    return f"{name}@{digest}" if at else name


class Runtime(Protocol):
    """
    A CRI v1 runtime as the kubelet uses it.  Every method returns a
    Deferred that fails with L{CRIError}; none blocks the reactor.  IDs are
    the runtime's (64 hex digits for containerd); images are references
    (C{docker.io/library/busybox:latest}) or image IDs.
    """

    #: Where the runtime is (C{unix:///run/k3s/containerd/containerd.sock}).
    endpoint: str

    # RuntimeService: the runtime itself.

    def version(self) -> Deferred[api.VersionResponse]:
        """Name, version and CRI version of the runtime (C{containerd}, C{1.6.20}, C{v1})."""

    def status(self) -> Deferred[api.StatusResponse]:
        """The runtime's C{RuntimeReady} and C{NetworkReady} conditions."""

    def update_runtime_config(self, pod_cidr: str) -> Deferred[None]:
        """Tell the runtime the node's pod CIDR."""

    # Sandboxes.

    def run_pod_sandbox(
        self, config: api.PodSandboxConfig, runtime_handler: str = ""
    ) -> Deferred[str]:
        """Create and start a pod's sandbox (its namespaces and network); its ID."""

    def stop_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        """Stop a sandbox and every container in it, and release its network."""

    def remove_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        """Remove a stopped sandbox and its containers (no error when it is gone)."""

    def pod_sandbox_status(self, sandbox_id: str) -> Deferred[api.PodSandboxStatus]:
        """A sandbox's state and network (its pod IPs)."""

    def list_pod_sandboxes(
        self, filter: api.PodSandboxFilter | None = None
    ) -> Deferred[list[api.PodSandbox]]:
        """The sandboxes, optionally those matching C{filter}."""

    # Containers.

    def create_container(
        self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> Deferred[str]:
        """Create a container in a sandbox (state CREATED); its ID."""

    def start_container(self, container_id: str) -> Deferred[None]:
        """Start a CREATED container (state RUNNING)."""

    def stop_container(self, container_id: str, timeout: int) -> Deferred[None]:
        """SIGTERM (or the image's stop signal), SIGKILL after C{timeout} seconds."""

    def remove_container(self, container_id: str) -> Deferred[None]:
        """Remove a container, stopping it first if it runs (no error when it is gone)."""

    def list_containers(
        self, filter: api.ContainerFilter | None = None
    ) -> Deferred[list[api.Container]]:
        """The containers, optionally those matching C{filter}."""

    def container_status(self, container_id: str) -> Deferred[api.ContainerStatus]:
        """A container's state, times, exit code, reason and image."""

    def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int
    ) -> Deferred[api.ExecSyncResponse]:
        """Run C{cmd} in a running container; its exit code and output (C{timeout} 0: none)."""

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
        """The URL on the runtime's streaming server where C{cmd} runs in a running container."""

    def attach(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> Deferred[str]:
        """The URL on the runtime's streaming server where a running container's stdio is."""

    def port_forward(self, sandbox_id: str, ports: Sequence[int] = ()) -> Deferred[str]:
        """The URL on the runtime's streaming server that forwards to a ready sandbox's ports."""

    # ImageService.

    def list_images(self, filter: api.ImageFilter | None = None) -> Deferred[list[api.Image]]:
        """The images the runtime holds."""

    def image_status(self, image: str) -> Deferred[api.Image | None]:
        """The image C{image} names, or None if the runtime does not hold it."""

    def pull_image(
        self,
        image: str,
        auth: api.AuthConfig | None = None,
        sandbox_config: api.PodSandboxConfig | None = None,
    ) -> Deferred[str]:
        """Pull an image; its reference by digest (the C{imageID} of container statuses)."""

    def remove_image(self, image: str) -> Deferred[None]:
        """Remove an image (no error when it is gone)."""

    def image_fs_info(self) -> Deferred[api.ImageFsInfoResponse]:
        """The image filesystem's usage."""
