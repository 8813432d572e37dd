"""
A pod as the kubelet hands it to the runtime: its sandbox config (names,
hostname, DNS, host ports, log directory, cgroup parent, namespaces) and
each container's config (command, environment, resources, security
context, log path, and the labels and annotations that let a restarted
kubelet find and count its containers again).  Pure functions of the pod
and what the worker looked up; L{ConfigError} carries kube's message when
the pod's references cannot be resolved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.machinery.objects import Object, get_path, metadata
from k3stw.machinery.quantity import QuantityError, parse_quantity
from k3stw.network.resolvconf import ResolvConf

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
CONTAINER_HASH = "io.kubernetes.container.hash"
RESTART_COUNT = "io.kubernetes.container.restartCount"
TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"
TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"

#: Where pod logs go (the kubelet's ``podLogsDir``).
POD_LOGS = "/var/log/pods"
#: The CFS period the kubelet sets with a CPU limit, in microseconds.
QUOTA_PERIOD = 100_000
_MIN_SHARES = 2
_MIN_QUOTA = 1000
#: The kubelet's limits on a pod's resolv.conf.
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048
_PROTOCOLS = {"TCP": api.TCP, "UDP": api.UDP, "SCTP": api.SCTP}
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ConfigError(Exception):
    """The kubelet cannot build a container's config (C{CreateContainerConfigError})."""


@dataclass(frozen=True)
class DNSSettings:
    """The kubelet's ``--cluster-dns`` and ``--cluster-domain``."""

    servers: tuple[str, ...] = ("10.43.0.10",)
    domain: str = "cluster.local"
    #: The node's resolv.conf (k3s's choice of it): Default pods' resolver, its search domains.
    host: ResolvConf = field(default_factory=ResolvConf)


class NodeSettings(Protocol):
    """What a sandbox's config needs of the node."""

    @property
    def dns(self) -> DNSSettings: ...

    @property
    def cgroup_root(self) -> str: ...

    @property
    def pod_logs(self) -> str: ...


@dataclass(frozen=True)
class Lookups:
    """
    What a container's environment refers to, read by the worker: ConfigMaps
    and Secrets of the pod's namespace by name (None: not found), the
    services whose variables are injected, the node's allocatable resources.
    """

    config_maps: Mapping[str, Object | None] = field(default_factory=dict)
    secrets: Mapping[str, Object | None] = field(default_factory=dict)
    services: tuple[Object, ...] = ()
    allocatable: Mapping[str, str] = field(default_factory=dict)


def pod_full_name(pod: Mapping[str, Any]) -> str:
    """C{<name>_<namespace>}, as the kubelet names a pod in its messages."""
    meta = metadata(pod)
    return f"{meta.get('name', '')}_{meta.get('namespace', '')}"


def log_directory(pod: Mapping[str, Any], root: str = POD_LOGS) -> str:
    meta = metadata(pod)
    return f"{root}/{meta.get('namespace')}_{meta.get('name')}_{meta.get('uid')}"


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """The labels that tie a sandbox or container to its pod."""
    meta = metadata(pod)
    return {
        POD_NAME: str(meta.get("name", "")),
        POD_NAMESPACE: str(meta.get("namespace", "")),
        POD_UID: str(meta.get("uid", "")),
    }


def host_network(pod: Mapping[str, Any]) -> bool:
    return bool(get_path(pod, "spec", "hostNetwork"))


def qos_class(pod: Mapping[str, Any]) -> str:
    return str(get_path(pod, "status", "qosClass") or "BestEffort")


def cgroup_parent(pod: Mapping[str, Any], root: str = "/") -> str:
    """The pod's cgroup under the cgroupfs driver (``<root>/kubepods/burstable/pod<uid>``)."""
    uid = metadata(pod).get("uid", "")
    qos = qos_class(pod)
    base = root.rstrip("/") + "/kubepods"
    return f"{base}/pod{uid}" if qos == "Guaranteed" else f"{base}/{qos.lower()}/pod{uid}"


def dns_config(pod: Mapping[str, Any], settings: DNSSettings) -> api.DNSConfig:
    """
    The pod's resolver, as the kubelet forms it: ClusterFirst (and
    ClusterFirstWithHostNet) use the cluster DNS, the cluster's search path
    followed by the node's own search domains, and ``ndots:5`` alone;
    Default (and a hostNetwork ClusterFirst pod, or any pod when the node has
    no cluster DNS) the node's resolv.conf; None only ``spec.dnsConfig``,
    which is then merged into any of them.  At most 3 nameservers and 32
    search domains (2048 characters) are kept.
    """
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    cluster_first = policy in ("ClusterFirst", "ClusterFirstWithHostNet")
    if (policy == "ClusterFirst" and spec.get("hostNetwork")) or (
        cluster_first and not settings.servers
    ):
        policy, cluster_first = "Default", False
    host = settings.host
    servers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    if cluster_first:
        namespace = metadata(pod).get("namespace", "")
        domain = settings.domain
        servers = list(settings.servers)
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host.searches]
        options = {"ndots": "5"}
    elif policy == "Default":
        servers, searches = list(host.nameservers), list(host.searches)
        options = dict(_option(option) for option in host.options)
    extra = spec.get("dnsConfig") or {}
    servers = list(dict.fromkeys([*servers, *(extra.get("nameservers") or ())]))
    searches = list(dict.fromkeys([*searches, *(extra.get("searches") or ())]))
    for option in extra.get("options") or ():
        options[option.get("name", "")] = option.get("value")
    return api.DNSConfig(
        servers=servers[:MAX_NAMESERVERS],
        searches=_search_limits(searches),
        options=[name if value is None else f"{name}:{value}" for name, value in options.items()],
    )


def _option(option: str) -> tuple[str, str | None]:
    name, colon, value = option.partition(":")
    return name, value if colon else None


def _search_limits(searches: list[str]) -> list[str]:
    """The search list cut from the end to kube's limits (32 domains, 2048 characters)."""
    kept = searches[:MAX_SEARCHES]
    while kept and len(" ".join(kept)) > MAX_SEARCH_CHARS:
        kept.pop()
    return kept


def _hostname(pod: Mapping[str, Any]) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("hostname") or metadata(pod).get("name", ""))[:63]


def _seccomp(context: Mapping[str, Any] | None) -> api.SecurityProfile:
    profile = (context or {}).get("seccompProfile") or {}
    kind = profile.get("type")
    if kind == "RuntimeDefault":
        return api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
    if kind == "Localhost":
        return api.SecurityProfile(
            profile_type=api.SecurityProfile.Localhost,
            localhost_ref=str(profile.get("localhostProfile", "")),
        )
    return api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)


def is_sidecar(container: Mapping[str, Any]) -> bool:
    """Whether an init container is a sidecar (``restartPolicy: Always``): it keeps running."""
    return container.get("restartPolicy") == "Always"


def sidecars(pod: Mapping[str, Any]) -> list[Object]:
    """The pod's sidecars, in the order they start."""
    return [c for c in get_path(pod, "spec", "initContainers") or () if is_sidecar(c)]


def _containers(pod: Mapping[str, Any]) -> list[Object]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]


def sandbox_config(
    pod: Mapping[str, Any], node: NodeSettings, attempt: int
) -> api.PodSandboxConfig:
    """The CRI config of the pod's sandbox, C{attempt} counting the sandboxes made before."""
    meta = metadata(pod)
    spec = pod.get("spec") or {}
    context = spec.get("securityContext") or {}
    ports = [
        api.PortMapping(
            protocol=_PROTOCOLS.get(port.get("protocol") or "TCP", api.TCP),
            container_port=int(port.get("containerPort", 0)),
            host_port=int(port["hostPort"]),
            host_ip=str(port.get("hostIP", "")),
        )
        for container in spec.get("containers") or ()
        for port in container.get("ports") or ()
        if port.get("hostPort")
    ]
    namespaces = api.NamespaceOption(
        network=api.NODE if spec.get("hostNetwork") else api.POD,
        pid=api.NODE if spec.get("hostPID") else api.CONTAINER,
        ipc=api.NODE if spec.get("hostIPC") else api.POD,
    )
    security = api.LinuxSandboxSecurityContext(
        namespace_options=namespaces,
        privileged=any(
            get_path(c, "securityContext", "privileged") is True for c in _containers(pod)
        ),
        seccomp=_seccomp(context),
        supplemental_groups=[int(g) for g in context.get("supplementalGroups") or ()],
    )
    if context.get("runAsUser") is not None:
        security.run_as_user.value = int(context["runAsUser"])
    if context.get("runAsGroup") is not None:
        security.run_as_group.value = int(context["runAsGroup"])
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            namespace=str(meta.get("namespace", "")),
            attempt=attempt,
        ),
        hostname="" if spec.get("hostNetwork") else _hostname(pod),
        log_directory=log_directory(pod, node.pod_logs),
        dns_config=dns_config(pod, node.dns),
        port_mappings=ports,
        labels={**(meta.get("labels") or {}), **pod_labels(pod)},
        annotations=dict(meta.get("annotations") or {}),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent(pod, node.cgroup_root),
            security_context=security,
            sysctls={s["name"]: str(s.get("value", "")) for s in context.get("sysctls") or ()},
        ),
    )


def container_hash(container: Mapping[str, Any]) -> str:
    """A short hash of the container's spec: a changed spec is a new container."""
    text = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# Resources


def _milli(value: object) -> int:
    return math.ceil(parse_quantity(value).value * 1000)


def _amount(resources: Mapping[str, Any], kind: str, name: str) -> object:
    return (resources.get(kind) or {}).get(name)


def linux_resources(container: Mapping[str, Any]) -> api.LinuxContainerResources:
    """CPU shares from the request, CFS quota from the limit, the memory limit (as the kubelet)."""
    resources = container.get("resources") or {}
    cpu_request = _amount(resources, "requests", "cpu") or _amount(resources, "limits", "cpu")
    shares = max(_MIN_SHARES, _milli(cpu_request) * 1024 // 1000) if cpu_request else _MIN_SHARES
    result = api.LinuxContainerResources(cpu_shares=shares)
    cpu_limit = _amount(resources, "limits", "cpu")
    if cpu_limit is not None:
        result.cpu_period = QUOTA_PERIOD
        result.cpu_quota = max(_MIN_QUOTA, _milli(cpu_limit) * QUOTA_PERIOD // 1000)
    memory_limit = _amount(resources, "limits", "memory")
    if memory_limit is not None:
        result.memory_limit_in_bytes = math.ceil(parse_quantity(memory_limit).value)
    return result


def _security(
    container: Mapping[str, Any], pod: Mapping[str, Any]
) -> api.LinuxContainerSecurityContext:
    pod_context = get_path(pod, "spec", "securityContext") or {}
    context = container.get("securityContext") or {}
    capabilities = context.get("capabilities") or {}
    result = api.LinuxContainerSecurityContext(
        capabilities=api.Capability(
            add_capabilities=list(capabilities.get("add") or ()),
            drop_capabilities=list(capabilities.get("drop") or ()),
        ),
        privileged=bool(context.get("privileged")),
        readonly_rootfs=bool(context.get("readOnlyRootFilesystem")),
        no_new_privs=context.get("allowPrivilegeEscalation") is False,
        seccomp=_seccomp(context if "seccompProfile" in context else pod_context),
        # The pod's fsGroup first, as the kubelet lists them: the volumes' group.
        supplemental_groups=[
            int(g)
            for g in (pod_context.get("fsGroup"), *(pod_context.get("supplementalGroups") or ()))
            if g is not None
        ],
        namespace_options=api.NamespaceOption(
            network=api.NODE if get_path(pod, "spec", "hostNetwork") else api.POD,
            pid=api.NODE if get_path(pod, "spec", "hostPID") else api.CONTAINER,
            ipc=api.NODE if get_path(pod, "spec", "hostIPC") else api.POD,
        ),
    )
    for key, target in (("runAsUser", result.run_as_user), ("runAsGroup", result.run_as_group)):
        value = context.get(key, pod_context.get(key))
        if value is not None:
            target.value = int(value)
    return result


# The environment


def _field_value(pod: Mapping[str, Any], path: str, ips: PodIPs) -> str:
    meta = metadata(pod)
    for prefix in ("metadata.labels", "metadata.annotations"):
        if path.startswith(prefix + "['") and path.endswith("']"):
            values = meta.get(prefix.partition(".")[2]) or {}
            return str(values.get(path[len(prefix) + 2 : -2], ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": get_path(pod, "spec", "nodeName") or "",
        "spec.serviceAccountName": get_path(pod, "spec", "serviceAccountName") or "",
        "status.hostIP": ips.host[0] if ips.host else "",
        "status.hostIPs": ",".join(ips.host),
        "status.podIP": ips.pod[0] if ips.pod else "",
        "status.podIPs": ",".join(ips.pod),
    }
    if path not in simple:
        raise ConfigError(f'unsupported fieldPath: "{path}"')
    return str(simple[path])


def _resource_value(
    pod: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    wanted = str(ref.get("containerName") or "")
    kind, _, name = str(ref.get("resource", "")).partition(".")
    container = next((c for c in _containers(pod) if c.get("name") == wanted), None)
    if container is None:
        raise ConfigError(f"container {wanted} not found")
    amount = _amount(container.get("resources") or {}, kind, name)
    if amount is None and kind == "requests":
        amount = _amount(container.get("resources") or {}, "limits", name)
    if amount is None:
        amount = allocatable.get(name, "0")
    try:
        divisor = parse_quantity(ref.get("divisor") or "1").value or 1
        return str(math.ceil(parse_quantity(amount).value / divisor))
    except QuantityError as e:
        raise ConfigError(str(e)) from e


@dataclass(frozen=True)
class PodIPs:
    """The node's and the pod's IPs, for the downward API."""

    host: tuple[str, ...] = ()
    pod: tuple[str, ...] = ()


def _service_env(services: Iterable[Object]) -> dict[str, str]:
    """The Docker-link variables of each service with a cluster IP (``enableServiceLinks``)."""
    env: dict[str, str] = {}
    for service in services:
        ip = get_path(service, "spec", "clusterIP")
        if not ip or ip == "None":
            continue
        prefix = str(metadata(service).get("name", "")).upper().replace("-", "_")
        ports = get_path(service, "spec", "ports") or []
        env[f"{prefix}_SERVICE_HOST"] = ip
        for index, port in enumerate(ports):
            number, protocol = port.get("port"), (port.get("protocol") or "TCP")
            if index == 0:
                env[f"{prefix}_SERVICE_PORT"] = str(number)
                env[f"{prefix}_PORT"] = f"{protocol.lower()}://{ip}:{number}"
            if port.get("name"):
                port_name = str(port["name"]).upper().replace("-", "_")
                env[f"{prefix}_SERVICE_PORT_{port_name}"] = str(number)
            base = f"{prefix}_PORT_{number}_{protocol}"
            env[base] = f"{protocol.lower()}://{ip}:{number}"
            env[f"{base}_PROTO"] = protocol.lower()
            env[f"{base}_PORT"] = str(number)
            env[f"{base}_ADDR"] = ip
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kube's ``$(VAR)`` expansion: known variables replaced, ``$$`` an escaped ``$``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def _source(lookups: Lookups, kind: str, name: str) -> tuple[Object | None, str]:
    """The ConfigMap or Secret C{name}, and kube's message should it be missing."""
    if kind == "ConfigMap":
        return lookups.config_maps.get(name), f'configmap "{name}" not found'
    return lookups.secrets.get(name), f'secret "{name}" not found'


def _data(obj: Object, kind: str) -> dict[str, str]:
    if kind == "ConfigMap":
        return {k: str(v) for k, v in (obj.get("data") or {}).items()}
    return {
        k: base64.b64decode(v).decode("utf-8", "replace")
        for k, v in (obj.get("data") or {}).items()
    }


def referenced(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The ConfigMaps and Secrets the pod's environments name."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    for container in _containers(pod):
        for source in container.get("envFrom") or ():
            if "configMapRef" in source:
                config_maps.add(str(source["configMapRef"].get("name", "")))
            if "secretRef" in source:
                secrets.add(str(source["secretRef"].get("name", "")))
        for var in container.get("env") or ():
            value_from = var.get("valueFrom") or {}
            if "configMapKeyRef" in value_from:
                config_maps.add(str(value_from["configMapKeyRef"].get("name", "")))
            if "secretKeyRef" in value_from:
                secrets.add(str(value_from["secretKeyRef"].get("name", "")))
    return config_maps, secrets


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookups: Lookups, ips: PodIPs
) -> list[tuple[str, str]]:
    """
    The container's environment in kube's order: service links, then
    C{envFrom}, then C{env} (each value expanded against what came before).

    :raises ConfigError: a ConfigMap, Secret or key that is missing and not optional.
    """
    namespace = metadata(pod).get("namespace", "")
    env: dict[str, str] = {}
    if get_path(pod, "spec", "enableServiceLinks") is not False:
        env.update(_service_env(lookups.services))
    for source in container.get("envFrom") or ():
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source.get("secretRef") or {})
        )
        obj, missing = _source(lookups, kind, str(ref.get("name", "")))
        if obj is None:
            if ref.get("optional"):
                continue
            raise ConfigError(missing)
        prefix = str(source.get("prefix") or "")
        for key, value in _data(obj, kind).items():
            env[prefix + key] = value
    ips_env = dict(env)
    for var in container.get("env") or ():
        name = str(var.get("name", ""))
        value_from = var.get("valueFrom")
        if not value_from:
            env[name] = expand(str(var.get("value", "")), ips_env)
        elif "fieldRef" in value_from:
            env[name] = _field_value(pod, str(value_from["fieldRef"].get("fieldPath", "")), ips)
        elif "resourceFieldRef" in value_from:
            env[name] = _resource_value(pod, value_from["resourceFieldRef"], lookups.allocatable)
        else:
            kind, ref = (
                ("ConfigMap", value_from["configMapKeyRef"])
                if "configMapKeyRef" in value_from
                else ("Secret", value_from.get("secretKeyRef") or {})
            )
            obj, missing = _source(lookups, kind, str(ref.get("name", "")))
            key = str(ref.get("key", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(missing)
            data = _data(obj, kind)
            if key not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(
                    f"couldn't find key {key} in {kind} {namespace}/{ref.get('name', '')}"
                )
            env[name] = data[key]
        ips_env[name] = env[name]
    return list(env.items())


def container_config(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    image: str,
    restart_count: int,
    env: list[tuple[str, str]],
    mounts: Iterable[api.Mount] = (),
) -> api.ContainerConfig:
    """The CRI config of one container instance (the C{restart_count}-th of its name)."""
    name = str(container.get("name", ""))
    variables = dict(env)
    annotations = {
        CONTAINER_HASH: container_hash(container),
        RESTART_COUNT: str(restart_count),
        TERMINATION_MESSAGE_PATH: termination_message_path(container),
        TERMINATION_MESSAGE_POLICY: str(container.get("terminationMessagePolicy") or "File"),
        TERMINATION_GRACE: str(grace_period(pod)),
    }
    if container.get("ports"):
        annotations["io.kubernetes.container.ports"] = json.dumps(
            container["ports"], separators=(",", ":")
        )
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=restart_count),
        image=api.ImageSpec(image=image),
        command=[expand(str(part), variables) for part in container.get("command") or ()],
        args=[expand(str(part), variables) for part in container.get("args") or ()],
        working_dir=str(container.get("workingDir") or ""),
        envs=[api.KeyValue(key=k, value=v) for k, v in env],
        mounts=list(mounts),
        labels={**pod_labels(pod), CONTAINER_NAME: name},
        annotations=annotations,
        log_path=f"{name}/{restart_count}.log",
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        tty=bool(container.get("tty")),
        linux=api.LinuxContainerConfig(
            resources=linux_resources(container), security_context=_security(container, pod)
        ),
    )


def termination_message_path(container: Mapping[str, Any]) -> str:
    """Where the container writes its termination message (the API's default if unset)."""
    return str(container.get("terminationMessagePath") or "/dev/termination-log")


def grace_period(pod: Mapping[str, Any]) -> int:
    """The pod's termination grace: the deletion's, else the spec's (30 s by default)."""
    meta = metadata(pod)
    if meta.get("deletionGracePeriodSeconds") is not None:
        return int(meta["deletionGracePeriodSeconds"])
    value = get_path(pod, "spec", "terminationGracePeriodSeconds")
    return 30 if value is None else int(value)
