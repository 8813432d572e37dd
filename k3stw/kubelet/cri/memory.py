"""
L{MemoryRuntime}: a L{Runtime} held in memory and timed by a clock, that
answers as containerd 1.6 does (states, exit reasons, NotFound errors, name
reservations, idempotent removals), for the pod worker's unit tests.

A test decides what containers do: L{Program}s (run for a while and exit
with a status, or run until stopped; handle SIGTERM or not), L{exit} now,
C{fail} the next calls of a method, C{exec_handler} for C{ExecSync}, a
C{registry} to pull from, and C{available} to play a runtime that is down.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, normalize_image

__all__ = ["MemoryRuntime", "Program"]

ENDPOINT = "memory://"
#: SIGKILL's exit status, as containerd reports it.
KILLED = 137
#: The pause image k3s uses, present unless a test says otherwise.
PAUSE_IMAGE = "docker.io/rancher/mirrored-pause:3.6"


@dataclass(frozen=True)
class Program:
    """
    What a container's process does once started.

    :ivar runs_for: seconds until it exits by itself (None: until stopped).
    :ivar exit_code: its status when it exits by itself.
    :ivar term_exit_code: its status when it gets SIGTERM; None: it ignores
        SIGTERM and is killed (137) when the stop's timeout is over.
    """

    runs_for: float | None = None
    exit_code: int = 0
    term_exit_code: int | None = 143


@dataclass
class _Sandbox:
    id: str
    config: api.PodSandboxConfig
    created_at: int
    ip: str
    runtime_handler: str
    ready: bool = True


@dataclass
class _Container:
    id: str
    sandbox_id: str
    config: api.ContainerConfig
    image: api.Image
    name: str
    created_at: int
    log_path: str
    state: int = api.CONTAINER_CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    program: Program = field(default_factory=Program)
    #: Its own exit (Program.runs_for) or the stop's SIGKILL, pending.
    timer: IDelayedCall | None = None
    #: Stops waiting for it to exit.
    stopping: list[Deferred[None]] = field(default_factory=list)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _image(reference: str, size: int) -> api.Image:
    name = normalize_image(reference)
    repository = name.partition("@")[0].rpartition(":")[0] if "@" not in name else name
    digest = _digest("manifest " + name)
    return api.Image(
        id="sha256:" + _digest("config " + name),
        repo_tags=[] if "@" in name else [name],
        repo_digests=[f"{repository.partition('@')[0]}@sha256:{digest}"],
        size=size,
        spec=api.ImageSpec(image=name),
    )


class MemoryRuntime:
    """
    A L{Runtime} in memory; see the module docstring.

    :param clock: timestamps and programs run on it.
    :param images: references present from the start (with a size of 1 MB).
    :param pod_cidr: where sandbox IPs come from (L{update_runtime_config} changes it).
    :param version: what L{version} reports as the runtime's version.
    """

    endpoint = ENDPOINT

    def __init__(
        self,
        clock: IReactorTime,
        images: Iterable[str] = (PAUSE_IMAGE,),
        pod_cidr: str = "10.42.0.0/24",
        version: str = "1.6.20",
    ) -> None:
        self.clock = clock
        self.runtime_version = version
        self.images: dict[str, api.Image] = {}
        for reference in images:
            self.add_image(reference)
        #: Images a pull finds, by reference, with their sizes.
        self.registry: dict[str, int] = {}
        #: What containers do, by container name first, then by image reference.
        self.programs: dict[str, Program] = {}
        #: Answers C{ExecSync}: (container, cmd) -> (exit code, stdout, stderr).
        self.exec_handler: Callable[[str, Sequence[str]], tuple[int, bytes, bytes]] = (
            lambda _id, _cmd: (0, b"", b"")
        )
        #: False: every call fails as if the socket were gone.
        self.available = True
        #: Calls made, as (method, first argument), for tests that count them.
        self.calls: list[tuple[str, str]] = []
        self.pod_cidr = pod_cidr
        self.sandboxes: dict[str, _Sandbox] = {}
        self.containers: dict[str, _Container] = {}
        self._failures: dict[str, list[CRIError]] = {}
        self._names: dict[str, str] = {}
        self._serial = 0
        self._next_ip = 2

    # Test controls

    def add_image(self, reference: str, size: int = 1_000_000) -> api.Image:
        """Hold C{reference} as if it had been imported."""
        image = _image(reference, size)
        self.images[image.spec.image] = image
        return image

    def fail(self, method: str, details: str, code: str = "UNKNOWN", times: int = 1) -> None:
        """Make the next C{times} calls of C{method} (C{StartContainer}) fail."""
        error = CRIError(method, self.endpoint, code, details)
        self._failures.setdefault(method, []).extend([error] * times)

    def exit(self, container_id: str, exit_code: int, reason: str = "") -> None:
        """A running container's process exits now (C{reason} C{OOMKilled}, say)."""
        container = self.containers[container_id]
        if container.state != api.CONTAINER_RUNNING:
            raise ValueError(f"container {container_id} is not running")
        self._exited(container, exit_code, reason)

    def running(self) -> list[str]:
        """The IDs of the running containers."""
        return [c.id for c in self.containers.values() if c.state == api.CONTAINER_RUNNING]

    # Plumbing

    def _now(self) -> int:
        return int(self.clock.seconds() * 1e9)

    def _new_id(self, kind: str) -> str:
        self._serial += 1
        return _digest(f"{kind} {self._serial}")

    def _check(self, method: str, argument: str = "") -> CRIError | None:
        self.calls.append((method, argument))
        if not self.available:
            return CRIError(
                method,
                self.endpoint,
                "UNAVAILABLE",
                'connection error: desc = "transport: Error while dialing: dial unix '
                '/run/k3s/containerd/containerd.sock: connect: no such file or directory"',
            )
        pending = self._failures.get(method)
        if pending:
            return pending.pop(0)
        return None

    def _sandbox(self, method: str, sandbox_id: str) -> _Sandbox | CRIError:
        found = [s for s in self.sandboxes.values() if s.id.startswith(sandbox_id)]
        if not sandbox_id or len(found) != 1:
            return CRIError(
                method,
                self.endpoint,
                "NOT_FOUND",
                f"an error occurred when try to find sandbox {sandbox_id!r}: not found",
            )
        return found[0]

    def _container(self, method: str, container_id: str) -> _Container | CRIError:
        found = [c for c in self.containers.values() if c.id.startswith(container_id)]
        if not container_id or len(found) != 1:
            return CRIError(
                method,
                self.endpoint,
                "NOT_FOUND",
                f"an error occurred when try to find container {container_id!r}: not found",
            )
        return found[0]

    def _resolve(self, image: str) -> api.Image | None:
        if image.startswith("sha256:"):
            return next((i for i in self.images.values() if i.id == image), None)
        return self.images.get(normalize_image(image))

    def _exited(self, container: _Container, exit_code: int, reason: str = "") -> None:
        if container.timer is not None and container.timer.active():
            container.timer.cancel()
        container.timer = None
        container.state = api.CONTAINER_EXITED
        container.finished_at = self._now()
        container.exit_code = exit_code
        container.reason = reason or ("Completed" if exit_code == 0 else "Error")
        waiters, container.stopping = container.stopping, []
        for waiter in waiters:
            waiter.callback(None)

    def _stop(self, container: _Container, timeout: int) -> Deferred[None]:
        if container.state != api.CONTAINER_RUNNING:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        container.stopping.append(stopped)
        if timeout <= 0:
            self._exited(container, KILLED)
        elif container.program.term_exit_code is not None:
            self._exited(container, container.program.term_exit_code)
        elif len(container.stopping) == 1:
            if container.timer is not None and container.timer.active():
                container.timer.cancel()
            container.timer = self.clock.callLater(timeout, self._exited, container, KILLED)
        return stopped

    # RuntimeService

    def version(self) -> Deferred[api.VersionResponse]:
        if (error := self._check("Version")) is not None:
            return fail(error)
        return succeed(
            api.VersionResponse(
                version="0.1.0",
                runtime_name="containerd",
                runtime_version=self.runtime_version,
                runtime_api_version="v1",
            )
        )

    def status(self) -> Deferred[api.StatusResponse]:
        if (error := self._check("Status")) is not None:
            return fail(error)
        conditions = [
            api.RuntimeCondition(type="RuntimeReady", status=True),
            api.RuntimeCondition(type="NetworkReady", status=True),
        ]
        return succeed(api.StatusResponse(status=api.RuntimeStatus(conditions=conditions)))

    def update_runtime_config(self, pod_cidr: str) -> Deferred[None]:
        if (error := self._check("UpdateRuntimeConfig", pod_cidr)) is not None:
            return fail(error)
        self.pod_cidr = pod_cidr
        return succeed(None)

    def run_pod_sandbox(
        self, config: api.PodSandboxConfig, runtime_handler: str = ""
    ) -> Deferred[str]:
        method = "RunPodSandbox"
        meta = config.metadata
        if (error := self._check(method, meta.name)) is not None:
            return fail(error)
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        if name in self._names:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to reserve sandbox name "{name}": name "{name}" is reserved '
                    f'for "{self._names[name]}"',
                )
            )
        if PAUSE_IMAGE not in self.images:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to get sandbox image "{PAUSE_IMAGE}": failed to pull image '
                    f'"{PAUSE_IMAGE}": not found',
                )
            )
        sandbox_id = self._new_id("sandbox")
        self._names[name] = sandbox_id
        options = config.linux.security_context.namespace_options
        ip = "" if options.network == api.NODE else self._allocate_ip()
        self.sandboxes[sandbox_id] = _Sandbox(sandbox_id, config, self._now(), ip, runtime_handler)
        return succeed(sandbox_id)

    def _allocate_ip(self) -> str:
        network = ipaddress.ip_network(self.pod_cidr, strict=False)
        address = network.network_address + self._next_ip
        self._next_ip += 1
        return str(address)

    def stop_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        method = "StopPodSandbox"
        if (error := self._check(method, sandbox_id)) is not None:
            return fail(error)
        sandbox = self._sandbox(method, sandbox_id)
        if isinstance(sandbox, CRIError):
            return fail(sandbox)
        for container in self.containers.values():
            if container.sandbox_id == sandbox.id:
                self._stop(container, 0)
        sandbox.ready = False
        return succeed(None)

    def remove_pod_sandbox(self, sandbox_id: str) -> Deferred[None]:
        method = "RemovePodSandbox"
        if (error := self._check(method, sandbox_id)) is not None:
            return fail(error)
        sandbox = self._sandbox(method, sandbox_id)
        if isinstance(sandbox, CRIError):
            return succeed(None)
        if sandbox.ready:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'sandbox container "{sandbox.id}" is not fully stopped',
                )
            )
        for container in list(self.containers.values()):
            if container.sandbox_id == sandbox.id:
                self._forget(container)
        del self.sandboxes[sandbox.id]
        self._names = {k: v for k, v in self._names.items() if v != sandbox.id}
        return succeed(None)

    def pod_sandbox_status(self, sandbox_id: str) -> Deferred[api.PodSandboxStatus]:
        method = "PodSandboxStatus"
        if (error := self._check(method, sandbox_id)) is not None:
            return fail(error)
        sandbox = self._sandbox(method, sandbox_id)
        if isinstance(sandbox, CRIError):
            return fail(sandbox)
        return succeed(
            api.PodSandboxStatus(
                id=sandbox.id,
                metadata=sandbox.config.metadata,
                state=api.SANDBOX_READY if sandbox.ready else api.SANDBOX_NOTREADY,
                created_at=sandbox.created_at,
                network=api.PodSandboxNetworkStatus(ip=sandbox.ip if sandbox.ready else ""),
                labels=sandbox.config.labels,
                annotations=sandbox.config.annotations,
                runtime_handler=sandbox.runtime_handler,
            )
        )

    def list_pod_sandboxes(
        self, filter: api.PodSandboxFilter | None = None
    ) -> Deferred[list[api.PodSandbox]]:
        if (error := self._check("ListPodSandbox")) is not None:
            return fail(error)
        found = []
        for sandbox in self.sandboxes.values():
            state = api.SANDBOX_READY if sandbox.ready else api.SANDBOX_NOTREADY
            if filter is not None and not (
                sandbox.id.startswith(filter.id)
                and (not filter.HasField("state") or filter.state.state == state)
                and _matches(sandbox.config.labels, filter.label_selector)
            ):
                continue
            found.append(
                api.PodSandbox(
                    id=sandbox.id,
                    metadata=sandbox.config.metadata,
                    state=state,
                    created_at=sandbox.created_at,
                    labels=sandbox.config.labels,
                    annotations=sandbox.config.annotations,
                    runtime_handler=sandbox.runtime_handler,
                )
            )
        return succeed(found)

    def create_container(
        self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> Deferred[str]:
        method = "CreateContainer"
        if (error := self._check(method, config.metadata.name)) is not None:
            return fail(error)
        sandbox = self._sandbox(method, sandbox_id)
        if isinstance(sandbox, CRIError):
            return fail(sandbox)
        if not sandbox.ready:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to create containerd container: sandbox container "{sandbox.id}"'
                    " is not running",
                )
            )
        image = self._resolve(config.image.image)
        if image is None:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "NOT_FOUND",
                    f'failed to resolve image "{config.image.image}": not found',
                )
            )
        pod = sandbox.config.metadata
        name = (
            f"{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"
        )
        if name in self._names:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to reserve container name "{name}": name "{name}" is reserved '
                    f'for "{self._names[name]}"',
                )
            )
        container_id = self._new_id("container")
        self._names[name] = container_id
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = f"{sandbox.config.log_directory.rstrip('/')}/{config.log_path}"
        program = self.programs.get(config.metadata.name) or self.programs.get(
            image.spec.image, Program()
        )
        self.containers[container_id] = _Container(
            container_id,
            sandbox.id,
            config,
            image,
            name,
            self._now(),
            log_path,
            program=program,
        )
        return succeed(container_id)

    def start_container(self, container_id: str) -> Deferred[None]:
        method = "StartContainer"
        if (error := self._check(method, container_id)) is not None:
            return fail(error)
        container = self._container(method, container_id)
        if isinstance(container, CRIError):
            return fail(container)
        if container.state != api.CONTAINER_CREATED:
            state = api.ContainerState.Name(container.state)
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to set starting state for container "{container.id}": '
                    f"container is in {state} state",
                )
            )
        container.state = api.CONTAINER_RUNNING
        container.started_at = self._now()
        program = container.program
        if program.runs_for is not None:
            container.timer = self.clock.callLater(
                program.runs_for, self._exited, container, program.exit_code
            )
        return succeed(None)

    def stop_container(self, container_id: str, timeout: int) -> Deferred[None]:
        method = "StopContainer"
        if (error := self._check(method, container_id)) is not None:
            return fail(error)
        container = self._container(method, container_id)
        if isinstance(container, CRIError):
            return fail(container)
        return self._stop(container, timeout)

    def remove_container(self, container_id: str) -> Deferred[None]:
        method = "RemoveContainer"
        if (error := self._check(method, container_id)) is not None:
            return fail(error)
        container = self._container(method, container_id)
        if isinstance(container, CRIError):
            return succeed(None)
        self._forget(container)
        return succeed(None)

    def _forget(self, container: _Container) -> None:
        self._stop(container, 0)
        del self.containers[container.id]
        self._names.pop(container.name, None)

    def list_containers(
        self, filter: api.ContainerFilter | None = None
    ) -> Deferred[list[api.Container]]:
        if (error := self._check("ListContainers")) is not None:
            return fail(error)
        found = []
        for c in self.containers.values():
            if filter is not None and not (
                c.id.startswith(filter.id)
                and c.sandbox_id.startswith(filter.pod_sandbox_id)
                and (not filter.HasField("state") or filter.state.state == c.state)
                and _matches(c.config.labels, filter.label_selector)
            ):
                continue
            found.append(
                api.Container(
                    id=c.id,
                    pod_sandbox_id=c.sandbox_id,
                    metadata=c.config.metadata,
                    image=c.image.spec,
                    image_ref=c.image.repo_digests[0],
                    state=c.state,  # type: ignore[arg-type]
                    created_at=c.created_at,
                    labels=c.config.labels,
                    annotations=c.config.annotations,
                    image_id=c.image.id,
                )
            )
        return succeed(found)

    def container_status(self, container_id: str) -> Deferred[api.ContainerStatus]:
        method = "ContainerStatus"
        if (error := self._check(method, container_id)) is not None:
            return fail(error)
        c = self._container(method, container_id)
        if isinstance(c, CRIError):
            return fail(c)
        return succeed(
            api.ContainerStatus(
                id=c.id,
                metadata=c.config.metadata,
                state=c.state,  # type: ignore[arg-type]
                created_at=c.created_at,
                started_at=c.started_at,
                finished_at=c.finished_at,
                exit_code=c.exit_code,
                image=c.image.spec,
                image_ref=c.image.repo_digests[0],
                reason=c.reason,
                message=c.message,
                labels=c.config.labels,
                annotations=c.config.annotations,
                mounts=c.config.mounts,
                log_path=c.log_path,
                image_id=c.image.id,
            )
        )

    def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int
    ) -> Deferred[api.ExecSyncResponse]:
        method = "ExecSync"
        if (error := self._check(method, container_id)) is not None:
            return fail(error)
        container = self._container(method, container_id)
        if isinstance(container, CRIError):
            return fail(container)
        if container.state != api.CONTAINER_RUNNING:
            state = api.ContainerState.Name(container.state)
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'container "{container.id}" is in {state} state',
                )
            )
        exit_code, stdout, stderr = self.exec_handler(container.id, list(cmd))
        return succeed(api.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=exit_code))

    # ImageService

    def list_images(self, filter: api.ImageFilter | None = None) -> Deferred[list[api.Image]]:
        if (error := self._check("ListImages")) is not None:
            return fail(error)
        wanted = filter.image.image if filter is not None and filter.image.image else ""
        found = self._resolve(wanted) if wanted else None
        if wanted:
            return succeed([found] if found is not None else [])
        return succeed(list(self.images.values()))

    def image_status(self, image: str) -> Deferred[api.Image | None]:
        if (error := self._check("ImageStatus", image)) is not None:
            return fail(error)
        return succeed(self._resolve(image))

    def pull_image(
        self,
        image: str,
        auth: api.AuthConfig | None = None,
        sandbox_config: api.PodSandboxConfig | None = None,
    ) -> Deferred[str]:
        method = "PullImage"
        if (error := self._check(method, image)) is not None:
            return fail(error)
        name = normalize_image(image)
        size = self.registry.get(name)
        if size is None:
            return fail(
                CRIError(
                    method,
                    self.endpoint,
                    "UNKNOWN",
                    f'failed to pull and unpack image "{name}": failed to resolve reference '
                    f'"{name}": {name}: not found',
                )
            )
        return succeed(self.add_image(name, size).repo_digests[0])

    def remove_image(self, image: str) -> Deferred[None]:
        if (error := self._check("RemoveImage", image)) is not None:
            return fail(error)
        found = self._resolve(image)
        if found is not None:
            del self.images[found.spec.image]
        return succeed(None)

    def image_fs_info(self) -> Deferred[api.ImageFsInfoResponse]:
        if (error := self._check("ImageFsInfo")) is not None:
            return fail(error)
        used = sum(image.size for image in self.images.values())
        usage = api.FilesystemUsage(
            timestamp=self._now(),
            fs_id=api.FilesystemIdentifier(mountpoint="/var/lib/rancher/k3s/agent/containerd"),
            used_bytes=api.UInt64Value(value=used),
            inodes_used=api.UInt64Value(value=len(self.images)),
        )
        return succeed(api.ImageFsInfoResponse(image_filesystems=[usage]))


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
