"""
A pod's status as the kubelet reports it, computed from what the runtime
holds: each container's state, last state, restart count, image and
readiness (sidecars, init containers with ``restartPolicy: Always``, as
regular containers); the phase (kubelet 1.32's getPhase); the kubelet's conditions
(PodReadyToStartContainers, Initialized, Ready, ContainersReady,
PodScheduled) with their reasons; host and pod IPs; start time; QoS class.
Pure: the worker observes, this module decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.pods.spec import RESTART_COUNT, is_sidecar, sidecars
from k3stw.machinery.objects import Object, get_path
from k3stw.machinery.times import rfc3339

KUBELET_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
)
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Waiting:
    """Why a container that should run does not (the kubelet's reason cache)."""

    reason: str
    message: str = ""


@dataclass
class Observed:
    """
    What the runtime holds for one pod.

    :ivar sandbox: the newest sandbox's status (None: none).
    :ivar containers: each container name's instances, newest first.
    :ivar waiting: why containers that should start have not.
    :ivar runtime: the runtime's name, the scheme of container IDs.
    :ivar probed: what the probes say of running containers (none: started and ready).
    """

    sandbox: api.PodSandboxStatus | None = None
    containers: dict[str, list[api.ContainerStatus]] = field(default_factory=dict)
    waiting: dict[str, Waiting] = field(default_factory=dict)
    runtime: str = "containerd"
    #: The probes' verdicts on running containers: (started, ready) by name.
    probed: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    @property
    def sandbox_ready(self) -> bool:
        return self.sandbox is not None and self.sandbox.state == api.SANDBOX_READY


def restart_count(status: api.ContainerStatus) -> int:
    try:
        return int(status.annotations.get(RESTART_COUNT, "0"))
    except ValueError:
        return 0


def _seconds(nanos: int) -> str:
    return rfc3339(nanos / 1e9)


def _terminated(status: api.ContainerStatus, runtime: str) -> Object:
    terminated: Object = {
        "exitCode": status.exit_code,
        "reason": status.reason or ("Completed" if status.exit_code == 0 else "Error"),
        "startedAt": _seconds(status.started_at) if status.started_at else None,
        "finishedAt": _seconds(status.finished_at),
        "containerID": f"{runtime}://{status.id}",
    }
    if status.message:
        terminated["message"] = status.message
    return terminated


def _state(status: api.ContainerStatus, runtime: str) -> Object:
    if status.state == api.CONTAINER_RUNNING:
        return {"running": {"startedAt": _seconds(status.started_at)}}
    if status.state == api.CONTAINER_EXITED:
        return {"terminated": _terminated(status, runtime)}
    return {"waiting": {}}


def container_status(
    spec: Mapping[str, Any], observed: Observed, default_reason: str, init: bool
) -> Object:
    """
    One container's status from its instances (the newest and the one before);
    C{init}: a regular init container, ready once it succeeded.
    """
    name = str(spec.get("name", ""))
    instances = observed.containers.get(name) or []
    runtime = observed.runtime
    result: Object = {"name": name, "image": spec.get("image", ""), "imageID": ""}
    if not instances:
        waiting = observed.waiting.get(name, Waiting(default_reason))
        result.update(
            state={"waiting": _waiting(waiting)},
            lastState={},
            ready=False,
            restartCount=0,
            started=False,
        )
        return result
    newest = instances[0]
    state = _state(newest, runtime)
    last: Object = {}
    if len(instances) > 1 and instances[1].state == api.CONTAINER_EXITED:
        last = {"terminated": _terminated(instances[1], runtime)}
    override = observed.waiting.get(name)
    if override is not None and newest.state != api.CONTAINER_RUNNING:
        if "terminated" in state:
            last = state
        state = {"waiting": _waiting(override)}
    running = "running" in state
    terminated = state.get("terminated") or {}
    started, ready = observed.probed.get(name, (True, True)) if running else (False, False)
    result.update(
        state=state,
        lastState=last,
        ready=(ready and not init) or (init and terminated.get("exitCode") == 0),
        restartCount=restart_count(newest),
        image=newest.image.image or spec.get("image", ""),
        imageID=newest.image_ref,
        containerID=f"{runtime}://{newest.id}",
        started=started,
    )
    return result


def _waiting(waiting: Waiting) -> Object:
    result: Object = {"reason": waiting.reason} if waiting.reason else {}
    if waiting.message:
        result["message"] = waiting.message
    return result


def _sidecar_names(pod: Mapping[str, Any]) -> set[str]:
    return {str(c.get("name")) for c in sidecars(pod)}


def _ever_started(status: Mapping[str, Any]) -> bool:
    """Whether a container ran at some point (running, terminated, or waiting after an exit)."""
    state, last = status.get("state") or {}, status.get("lastState") or {}
    return "running" in state or "terminated" in state or "terminated" in last


def phase(
    pod: Mapping[str, Any], statuses: Sequence[Object], inits: Sequence[Object], terminating: bool
) -> str:
    """
    kubelet 1.32's getPhase over the container statuses.  Sidecars count as
    running while they run (pending until started); exited ones do not count.
    """
    policy = get_path(pod, "spec", "restartPolicy") or "Always"
    side = _sidecar_names(pod)
    pending_init = failed_init = 0
    running = waiting = stopped = succeeded = 0
    for status in inits:
        state, last = status.get("state") or {}, status.get("lastState") or {}
        if status["name"] in side:
            if "running" in state:
                running += 1
                pending_init += not status.get("started")
            elif "waiting" in state and "terminated" not in last:
                pending_init += 1
                waiting += 1
            continue
        terminated = state.get("terminated")
        if terminated is not None:
            if terminated.get("exitCode") != 0:
                failed_init += 1
        elif "waiting" in state and (last.get("terminated") or {}).get("exitCode", 0) != 0:
            failed_init += 1
        else:
            pending_init += 1
    if failed_init and policy == "Never":
        return "Failed"
    for status in statuses:
        state, last = status.get("state") or {}, status.get("lastState") or {}
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"].get("exitCode") == 0
        elif "waiting" in state and "terminated" in last:
            stopped += 1
        else:
            waiting += 1
    # A sidecar restarting after the regular containers ran does not make the pod Pending again.
    if (pending_init and not any(_ever_started(s) for s in statuses)) or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if terminating:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def regular_containers_done(pod: Mapping[str, Any], observed: Observed) -> bool:
    """
    Whether every regular container exited and none will be restarted (a
    Never or OnFailure pod): its sidecars alone keep nothing alive, the pod
    is killed (kubelet 1.32's computePodActions).
    """
    policy = get_path(pod, "spec", "restartPolicy") or "Always"
    containers = get_path(pod, "spec", "containers") or ()
    if policy == "Always" or not containers:
        return False
    for container in containers:
        instances = observed.containers.get(str(container.get("name"))) or []
        if not instances or instances[0].state != api.CONTAINER_EXITED:
            return False
        if policy == "OnFailure" and instances[0].exit_code != 0:
            return False
    return True


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Object:
    condition: Object = {"type": kind, "status": "True" if ok else "False"}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _names(statuses: Sequence[Object], keep: Any) -> str:
    return " ".join(str(s["name"]) for s in statuses if keep(s))


def conditions(
    pod: Mapping[str, Any],
    statuses: Sequence[Object],
    inits: Sequence[Object],
    pod_phase: str,
    sandbox_ready: bool,
) -> list[Object]:
    """The kubelet's conditions, in the order it emits them."""
    started = any("running" in s["state"] or "terminated" in s["state"] for s in statuses)
    side = _sidecar_names(pod)
    # A sidecar is complete once started; a regular init container once it succeeded.
    incomplete = _names(inits, lambda s: not s.get("started" if s["name"] in side else "ready"))
    if pod_phase == "Succeeded":
        initialized = _condition("Initialized", True, "PodCompleted")
    elif not incomplete or started:
        initialized = _condition("Initialized", True)
    else:
        initialized = _condition(
            "Initialized",
            False,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{incomplete}]",
        )
    sidecar_statuses = [s for s in inits if s["name"] in side]
    unready = _names([*sidecar_statuses, *statuses], lambda s: not s.get("ready"))
    if pod_phase in TERMINAL:
        reason = "PodCompleted" if pod_phase == "Succeeded" else "PodFailed"
        ready = _condition("ContainersReady", False, reason)
    elif unready:
        ready = _condition(
            "ContainersReady",
            False,
            "ContainersNotReady",
            f"containers with unready status: [{unready}]",
        )
    else:
        ready = _condition("ContainersReady", True)
    pod_ready = {**ready, "type": "Ready"}
    if ready["status"] == "True":
        pod_ready = _readiness_gates(pod) or pod_ready
    return [
        _condition("PodReadyToStartContainers", sandbox_ready),
        initialized,
        pod_ready,
        ready,
        _condition("PodScheduled", True),
    ]


def _readiness_gates(pod: Mapping[str, Any]) -> Object | None:
    held = {c.get("type"): c for c in get_path(pod, "status", "conditions") or ()}
    for gate in get_path(pod, "spec", "readinessGates") or ():
        kind = gate.get("conditionType")
        condition = held.get(kind)
        if condition is None:
            message = f'corresponding condition of pod readiness gate "{kind}" does not exist.'
            return _condition("Ready", False, "ReadinessGatesNotReady", message)
        if condition.get("status") != "True":
            message = (
                f'the status of pod readiness gate "{kind}" is not "True", '
                f"but {condition.get('status')}"
            )
            return _condition("Ready", False, "ReadinessGatesNotReady", message)
    return None


def pod_status(
    pod: Mapping[str, Any],
    observed: Observed,
    host_ips: Sequence[str],
    now: float,
    terminating: bool = False,
    failed: tuple[str, str] | None = None,
) -> Object:
    """
    The status the kubelet writes for C{pod}.

    :param terminating: the kubelet is killing the pod (stopped containers decide the phase).
    :param failed: a reason and message that make the pod Failed (C{DeadlineExceeded}).
    """
    spec = pod.get("spec") or {}
    held: Object = pod.get("status") or {}
    init_specs = spec.get("initContainers") or []
    default = "PodInitializing" if init_specs else "ContainerCreating"
    inits = [
        container_status(c, observed, "PodInitializing", not is_sidecar(c)) for c in init_specs
    ]
    statuses = sorted(
        (container_status(c, observed, default, False) for c in spec.get("containers") or ()),
        key=lambda s: str(s["name"]),
    )
    status: Object = {}
    pod_phase = phase(pod, statuses, inits, terminating or failed is not None)
    if held.get("phase") in TERMINAL:
        pod_phase = held["phase"]
        for kept in ("reason", "message"):
            if held.get(kept):
                status[kept] = held[kept]
    elif failed is not None:
        pod_phase = "Failed"
        status["reason"], status["message"] = failed
    status["phase"] = pod_phase
    previous = {c.get("type"): c for c in held.get("conditions") or ()}
    stamp = rfc3339(now)
    ours = conditions(pod, statuses, inits, pod_phase, observed.sandbox_ready)
    for condition in ours:
        before = previous.get(condition["type"])
        condition["lastProbeTime"] = None
        same = before is not None and before.get("status") == condition["status"]
        condition["lastTransitionTime"] = (
            before.get("lastTransitionTime") if same and before else stamp
        )
    others = [c for c in held.get("conditions") or () if c.get("type") not in KUBELET_CONDITIONS]
    status["conditions"] = others + ours
    if host_ips:
        status["hostIP"] = host_ips[0]
        status["hostIPs"] = [{"ip": ip} for ip in host_ips]
    pod_ips = _pod_ips(pod, observed, host_ips)
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    status["startTime"] = held.get("startTime") or stamp
    if inits:
        status["initContainerStatuses"] = inits
    status["containerStatuses"] = statuses
    status["qosClass"] = held.get("qosClass") or "BestEffort"
    return status


def _pod_ips(pod: Mapping[str, Any], observed: Observed, host_ips: Sequence[str]) -> list[str]:
    if get_path(pod, "spec", "hostNetwork"):
        return list(host_ips)
    sandbox = observed.sandbox
    if sandbox is None or not observed.sandbox_ready or not sandbox.network.ip:
        held = get_path(pod, "status", "podIPs") or []
        return [str(ip.get("ip")) for ip in held if ip.get("ip")]
    ips = [sandbox.network.ip, *(ip.ip for ip in sandbox.network.additional_ips)]
    first = ips[0]
    other = next((ip for ip in ips[1:] if (":" in ip) != (":" in first)), None)
    return [first] + ([other] if other else [])
