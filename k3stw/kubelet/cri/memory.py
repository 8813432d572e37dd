"""
L{MemoryRuntime}: a L{Runtime} held in memory and timed by a clock, that
answers as containerd 1.6 does (states, exit reasons, NotFound errors, name
reservations, idempotent removals), for the pod worker's unit tests.

A test decides what containers do: L{Program}s (run for a while and exit
with a status, or run until stopped; handle SIGTERM or not), L{exit} now,
C{fail} the next calls of a method, C{exec_handler} for C{ExecSync}, a
C{registry} to pull from, and C{available} to play a runtime that is down.
C{Exec}, C{Attach} and C{PortForward} hand out URLs under C{stream_base}
and keep what each was for in C{streams}.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

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


P = ParamSpec("P")
T = TypeVar("T")


def _cri(
    name: str,
) -> Callable[
    [Callable[Concatenate[MemoryRuntime, P], T]],
    Callable[Concatenate[MemoryRuntime, P], Deferred[T]],
]:
    """
    Make a method one CRI call C{name}: recorded, refused while the runtime
    is down or a failure is queued for it, its L{CRIError} a failed Deferred,
    its value the answer.
    """

    def decorate(
        body: Callable[Concatenate[MemoryRuntime, P], T],
    ) -> Callable[Concatenate[MemoryRuntime, P], Deferred[T]]:
        def call(runtime: MemoryRuntime, /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
            try:
                runtime._check(name, args[0] if args else "")
                return succeed(body(runtime, *args, **kwargs))
            except CRIError as e:
                return fail(e)

        call.__name__, call.__doc__ = body.__name__, body.__doc__
        return call

    return decorate


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
        #: False: Status says NetworkReady=false, as containerd does without a CNI config.
        self.network_ready = True
        #: Calls made, as (method, first argument), for tests that count them.
        self.calls: list[tuple[str, str]] = []
        #: The credentials each image was last pulled with, by reference.
        self.pull_auths: dict[str, api.AuthConfig | None] = {}
        self.pod_cidr = pod_cidr
        self.sandboxes: dict[str, _Sandbox] = {}
        self.containers: dict[str, _Container] = {}
        self._failures: dict[str, list[CRIError]] = {}
        self._names: dict[str, str] = {}
        self._serial = 0
        self._next_ip = 2
        #: Where the streaming URLs point (containerd's streaming server on k3s).
        self.stream_base = "http://127.0.0.1:10010"
        #: The streaming requests handed out, by the URL's token.
        self.streams: dict[str, api.ExecRequest | api.AttachRequest | api.PortForwardRequest] = {}

    # Test controls

    def add_image(self, reference: str, size: int = 1_000_000) -> api.Image:
        """Hold C{reference} as if it had been imported."""
        image = _image(reference, size)
        self.images[image.spec.image] = image
        return image

    def fail(self, method: str, details: str, code: str = "UNKNOWN", times: int = 1) -> None:
        """Make the next C{times} calls of C{method} (C{StartContainer}) fail."""
        error = self._refused(method, details, code)
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

    def _refused(self, method: str, details: str, code: str = "UNKNOWN") -> CRIError:
        return CRIError(method, self.endpoint, code, details)

    def _check(self, method: str, argument: object = "") -> None:
        """Record a call; refuse it while the runtime is down or a failure is queued."""
        self.calls.append((method, argument if isinstance(argument, str) else ""))
        if not self.available:
            raise self._refused(
                method,
                'connection error: desc = "transport: Error while dialing: dial unix '
                '/run/k3s/containerd/containerd.sock: connect: no such file or directory"',
                "UNAVAILABLE",
            )
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _sandbox(self, method: str, sandbox_id: str) -> _Sandbox:
        found = [s for s in self.sandboxes.values() if s.id.startswith(sandbox_id)]
        if not sandbox_id or len(found) != 1:
            raise self._refused(
                method,
                f"an error occurred when try to find sandbox {sandbox_id!r}: not found",
                "NOT_FOUND",
            )
        return found[0]

    def _container(self, method: str, container_id: str) -> _Container:
        found = [c for c in self.containers.values() if c.id.startswith(container_id)]
        if not container_id or len(found) != 1:
            raise self._refused(
                method,
                f"an error occurred when try to find container {container_id!r}: not found",
                "NOT_FOUND",
            )
        return found[0]

    def _reserve(self, method: str, kind: str, name: str, owner: str) -> None:
        """Reserve a sandbox's or container's name, as containerd does, for its ID."""
        if name in self._names:
            raise self._refused(
                method,
                f'failed to reserve {kind} name "{name}": name "{name}" is reserved '
                f'for "{self._names[name]}"',
            )
        self._names[name] = owner

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
        """SIGKILL at once (C{timeout} 0), else SIGTERM and SIGKILL after C{timeout}."""
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

    def _forget(self, container: _Container) -> None:
        self._stop(container, 0)
        del self.containers[container.id]
        self._names.pop(container.name, None)

    def _running(self, method: str, container: _Container, message: str) -> None:
        """Refuse unless the container is in the state C{message} expects it in."""
        state = api.ContainerState.Name(container.state)
        raise self._refused(method, message.format(id=container.id, state=state))

    # RuntimeService

    @_cri("Version")
    def version(self) -> api.VersionResponse:
        return api.VersionResponse(
            version="0.1.0",
            runtime_name="containerd",
            runtime_version=self.runtime_version,
            runtime_api_version="v1",
        )

    @_cri("Status")
    def status(self) -> api.StatusResponse:
        conditions = [
            api.RuntimeCondition(type="RuntimeReady", status=True),
            api.RuntimeCondition(type="NetworkReady", status=True)
            if self.network_ready
            else api.RuntimeCondition(
                type="NetworkReady",
                status=False,
                reason="NetworkPluginNotReady",
                message="Network plugin returns error: cni plugin not initialized",
            ),
        ]
        return api.StatusResponse(status=api.RuntimeStatus(conditions=conditions))

    @_cri("UpdateRuntimeConfig")
    def update_runtime_config(self, pod_cidr: str) -> None:
        self.pod_cidr = pod_cidr

    @_cri("RunPodSandbox")
    def run_pod_sandbox(self, config: api.PodSandboxConfig, runtime_handler: str = "") -> str:
        if PAUSE_IMAGE not in self.images:
            raise self._refused(
                "RunPodSandbox",
                f'failed to get sandbox image "{PAUSE_IMAGE}": failed to pull image '
                f'"{PAUSE_IMAGE}": not found',
            )
        meta = config.metadata
        sandbox_id = self._new_id("sandbox")
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        self._reserve("RunPodSandbox", "sandbox", name, sandbox_id)
        options = config.linux.security_context.namespace_options
        ip = "" if options.network == api.NODE else self._allocate_ip()
        self.sandboxes[sandbox_id] = _Sandbox(sandbox_id, config, self._now(), ip, runtime_handler)
        return sandbox_id

    def _allocate_ip(self) -> str:
        network = ipaddress.ip_network(self.pod_cidr, strict=False)
        address = network.network_address + self._next_ip
        self._next_ip += 1
        return str(address)

    @_cri("StopPodSandbox")
    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._sandbox("StopPodSandbox", sandbox_id)
        for container in self.containers.values():
            if container.sandbox_id == sandbox.id:
                self._stop(container, 0)
        sandbox.ready = False

    @_cri("RemovePodSandbox")
    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        try:
            sandbox = self._sandbox("RemovePodSandbox", sandbox_id)
        except CRIError:
            return
        if sandbox.ready:
            raise self._refused(
                "RemovePodSandbox", f'sandbox container "{sandbox.id}" is not fully stopped'
            )
        for container in list(self.containers.values()):
            if container.sandbox_id == sandbox.id:
                self._forget(container)
        del self.sandboxes[sandbox.id]
        self._names = {k: v for k, v in self._names.items() if v != sandbox.id}

    @_cri("PodSandboxStatus")
    def pod_sandbox_status(self, sandbox_id: str) -> api.PodSandboxStatus:
        sandbox = self._sandbox("PodSandboxStatus", sandbox_id)
        return api.PodSandboxStatus(
            id=sandbox.id,
            metadata=sandbox.config.metadata,
            state=api.SANDBOX_READY if sandbox.ready else api.SANDBOX_NOTREADY,
            created_at=sandbox.created_at,
            network=api.PodSandboxNetworkStatus(ip=sandbox.ip if sandbox.ready else ""),
            labels=sandbox.config.labels,
            annotations=sandbox.config.annotations,
            runtime_handler=sandbox.runtime_handler,
        )

    @_cri("ListPodSandbox")
    def list_pod_sandboxes(
        self, filter: api.PodSandboxFilter | None = None
    ) -> list[api.PodSandbox]:
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
        return found

    @_cri("CreateContainer")
    def create_container(
        self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> str:
        method = "CreateContainer"
        sandbox = self._sandbox(method, sandbox_id)
        if not sandbox.ready:
            raise self._refused(
                method,
                f'failed to create containerd container: sandbox container "{sandbox.id}"'
                " is not running",
            )
        image = self._resolve(config.image.image)
        if image is None:
            raise self._refused(
                method, f'failed to resolve image "{config.image.image}": not found', "NOT_FOUND"
            )
        pod = sandbox.config.metadata
        name = (
            f"{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"
        )
        container_id = self._new_id("container")
        self._reserve(method, "container", name, container_id)
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = f"{sandbox.config.log_directory.rstrip('/')}/{config.log_path}"
        program = self.programs.get(config.metadata.name) or self.programs.get(
            image.spec.image, Program()
        )
        self.containers[container_id] = _Container(
            container_id, sandbox.id, config, image, name, self._now(), log_path, program=program
        )
        return container_id

    @_cri("StartContainer")
    def start_container(self, container_id: str) -> None:
        container = self._container("StartContainer", container_id)
        if container.state != api.CONTAINER_CREATED:
            self._running(
                "StartContainer",
                container,
                'failed to set starting state for container "{id}": container is in {state} state',
            )
        container.state = api.CONTAINER_RUNNING
        container.started_at = self._now()
        program = container.program
        if program.runs_for is not None:
            container.timer = self.clock.callLater(
                program.runs_for, self._exited, container, program.exit_code
            )

    def stop_container(self, container_id: str, timeout: int) -> Deferred[None]:
        # Not @_cri: the answer waits for the container to exit.
        try:
            self._check("StopContainer", container_id)
            return self._stop(self._container("StopContainer", container_id), timeout)
        except CRIError as e:
            return fail(e)

    @_cri("RemoveContainer")
    def remove_container(self, container_id: str) -> None:
        try:
            container = self._container("RemoveContainer", container_id)
        except CRIError:
            return
        self._forget(container)

    @_cri("ListContainers")
    def list_containers(self, filter: api.ContainerFilter | None = None) -> list[api.Container]:
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
        return found

    @_cri("ContainerStatus")
    def container_status(self, container_id: str) -> api.ContainerStatus:
        c = self._container("ContainerStatus", container_id)
        return api.ContainerStatus(
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

    @_cri("ExecSync")
    def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int
    ) -> api.ExecSyncResponse:
        container = self._container("ExecSync", container_id)
        if container.state != api.CONTAINER_RUNNING:
            self._running("ExecSync", container, 'container "{id}" is in {state} state')
        exit_code, stdout, stderr = self.exec_handler(container.id, list(cmd))
        return api.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=exit_code)

    @_cri("Exec")
    def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> str:
        container = self._streamable("Exec", container_id, tty, stdin, stdout, stderr)
        request = api.ExecRequest(
            container_id=container.id,
            cmd=list(cmd),
            tty=tty,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        return self._stream_url("exec", request)

    @_cri("Attach")
    def attach(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        container = self._streamable("Attach", container_id, tty, stdin, stdout, stderr)
        request = api.AttachRequest(
            container_id=container.id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
        return self._stream_url("attach", request)

    @_cri("PortForward")
    def port_forward(self, sandbox_id: str, ports: Sequence[int] = ()) -> str:
        sandbox = self._sandbox("PortForward", sandbox_id)
        if not sandbox.ready:
            raise self._refused("PortForward", "sandbox container is not running")
        request = api.PortForwardRequest(pod_sandbox_id=sandbox.id, port=list(ports))
        return self._stream_url("portforward", request)

    def _streamable(
        self, method: str, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> _Container:
        """The running container a stream is for, refused as containerd refuses it."""
        container = self._container(method, container_id)
        if container.state != api.CONTAINER_RUNNING:
            state = api.ContainerState.Name(container.state)
            raise self._refused(method, f"container is in {state} state")
        if tty and stderr:
            raise self._refused(method, "tty and stderr cannot both be true", "INVALID_ARGUMENT")
        if not (stdin or stdout or stderr):
            raise self._refused(
                method, "one of stdin, stdout, or stderr must be set", "INVALID_ARGUMENT"
            )
        return container

    def _stream_url(
        self, kind: str, request: api.ExecRequest | api.AttachRequest | api.PortForwardRequest
    ) -> str:
        token = self._new_id("token")[:8]
        self.streams[token] = request
        return f"{self.stream_base}/{kind}/{token}"

    # ImageService

    @_cri("ListImages")
    def list_images(self, filter: api.ImageFilter | None = None) -> list[api.Image]:
        if filter is not None and filter.image.image:
            found = self._resolve(filter.image.image)
            return [found] if found is not None else []
        return list(self.images.values())

    @_cri("ImageStatus")
    def image_status(self, image: str) -> api.Image | None:
        return self._resolve(image)

    @_cri("PullImage")
    def pull_image(
        self,
        image: str,
        auth: api.AuthConfig | None = None,
        sandbox_config: api.PodSandboxConfig | None = None,
    ) -> str:
        name = normalize_image(image)
        self.pull_auths[name] = auth
        size = self.registry.get(name)
        if size is None:
            raise self._refused(
                "PullImage",
                f'failed to pull and unpack image "{name}": failed to resolve reference '
                f'"{name}": {name}: not found',
            )
        return str(self.add_image(name, size).repo_digests[0])

    @_cri("RemoveImage")
    def remove_image(self, image: str) -> None:
        found = self._resolve(image)
        if found is not None:
            del self.images[found.spec.image]

    @_cri("ImageFsInfo")
    def image_fs_info(self) -> api.ImageFsInfoResponse:
        used = sum(image.size for image in self.images.values())
        usage = api.FilesystemUsage(
            timestamp=self._now(),
            fs_id=api.FilesystemIdentifier(mountpoint="/var/lib/rancher/k3s/agent/containerd"),
            used_bytes=api.UInt64Value(value=used),
            inodes_used=api.UInt64Value(value=len(self.images)),
        )
        return api.ImageFsInfoResponse(image_filesystems=[usage])


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
