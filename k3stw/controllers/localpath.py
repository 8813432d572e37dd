"""
k3s's packaged local storage (``local-storage``): the ``local-path``
StorageClass, the default one, and the ``local-path-config`` ConfigMap, as
k3s deploys them from its ``local-storage.yaml`` manifest; and the
provisioner, rancher's local-path-provisioner, run in the server under
kube-controller-manager's Lease instead of as a Deployment.

The provisioner makes a volume for each claim of a class it provisions for
once the persistentvolume-binder has handed it over
(``volume.kubernetes.io/storage-provisioner``) and, for the
``WaitForFirstConsumer`` classes, the scheduler has chosen the node
(``volume.kubernetes.io/selected-node``): ``pvc-<claim uid>``, on that node
alone (required node affinity on ``kubernetes.io/hostname``), at
``<node's path>/pvc-<uid>_<namespace>_<claim>``, a ``local`` volume or a
``hostPath`` one (``DirectoryOrCreate``) as the claim's ``volumeType`` or the
class's ``defaultVolumeType`` annotation asks.

A released volume of the ``Delete`` policy it made is torn down on its node
first, as k3s's provisioner does it: a helper pod (``helper-pod-delete-<pv>``
in ``kube-system``, bound to the volume's node, built from the ConfigMap's
``helperPod.yaml``) runs the ConfigMap's ``teardown`` script (``rm -rf
"${VOL_DIR}"``) with the volume's parent directory mounted; once it
succeeded the pod and the volume are deleted.  A helper that has not
succeeded within L{HELPER_TIMEOUT} is removed, ``VolumeFailedDelete`` is
recorded on the volume, and the teardown tried again with back-off.  The
removal is sent to the node in a pod, not done by the node's kubelet on its
own, because only a pod reaches a node for a volume no pod uses: the node
authorizer lets a kubelet read a volume only while a pod of its node uses
the volume's claim, and a released volume's claim is gone.  (The directory
is made by the kubelet itself, L{k3stw.kubelet.volumes.manager}, in place
of the create helper: it reads the volume then, to mount it.)

A node that runs no pods (``--container-runtime none``), or is gone, can
run no helper: its volume is deleted at once and the data stays there.

Left out: the create helper pod (see above), ``sharedFileSystemPath``,
``pathPattern``, ``nodePath`` parameters, the config's ``setupCommand``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import configmaps, nodes, pods
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, create_if_absent, delete_if_present
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.persistentvolumes import (
    BETA_STORAGE_PROVISIONER,
    PROVISIONED_BY,
    SELECTED_NODE,
    STORAGE_PROVISIONER,
    StorageKinds,
    claim_ref,
)
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.nodes import runs_pods
from k3stw.machinery.objects import (
    Object,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    uid_of,
)
from k3stw.machinery.quantity import parse_quantity
from k3stw.machinery.times import parse_time

#: The name of k3s's packaged component, as ``--disable`` names it.
COMPONENT = "local-storage"
PROVISIONER = "rancher.io/local-path"
STORAGE_CLASS = "local-path"
CONFIG_MAP = "local-path-config"
NAMESPACE = "kube-system"
DEFAULT_NODE = "DEFAULT_PATH_FOR_NON_LISTED_NODES"
#: The provisioner's own record of the node a volume is on.
VOLUME_NODE = "local.path.provisioner/selected-node"
HOSTNAME = "kubernetes.io/hostname"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
BUSYBOX = "rancher/mirrored-library-busybox:1.36.1"

_SETUP = '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "${VOL_DIR}"\nchmod 700 "${VOL_DIR}/.."'
_TEARDOWN = '#!/bin/sh\nset -eu\nrm -rf "${VOL_DIR}"'
_HELPER_POD = (
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: helper-pod\nspec:\n  containers:\n"
    f'  - name: helper-pod\n    image: "{BUSYBOX}"\n    imagePullPolicy: IfNotPresent'
)
_DELETE = "delete:"
#: The provisioner's ConfigMap alone (not every ConfigMap's data in memory).
_CONFIG = Selection(CONFIG_MAP, namespace=NAMESPACE, predicate=lambda o: name_of(o) == CONFIG_MAP)
#: The pods that tear a released volume down on its node.
DELETE_HELPER = "helper-pod-delete-"
_HELPERS = Selection(
    "local-path-helpers",
    namespace=NAMESPACE,
    predicate=lambda o: name_of(o).startswith(DELETE_HELPER),
)
#: How long a helper pod has to succeed (the provisioner's ``CmdTimeoutSeconds``).
HELPER_TIMEOUT = 120


def storage_class() -> Object:
    """The ``local-path`` StorageClass of k3s's ``local-storage.yaml``."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"defaultVolumeType": "local", DEFAULT_CLASS: "true"},
        },
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }


def config_map(storage_path: str) -> Object:
    """The ``local-path-config`` ConfigMap, every node's volumes under C{storage_path}."""
    config = (
        '{\n  "nodePathMap":[\n  {\n    "node":"' + DEFAULT_NODE + '",\n'
        f'    "paths":["{storage_path}"]\n  }}\n  ]\n}}'
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": {
            "config.json": config,
            "setup": _SETUP,
            "teardown": _TEARDOWN,
            "helperPod.yaml": _HELPER_POD,
        },
    }


async def deploy(store: ObjectStore, registry: Registry, storage_path: str) -> None:
    """
    Create the class and the ConfigMap, or put back what the manifest says
    of them (k3s applies its packaged manifests again at every start).
    """
    classes = registry.require("storage.k8s.io", "v1", "storageclasses")
    for resource, namespace, wanted, fields in (
        (classes, None, storage_class(), ("provisioner",)),
        (configmaps.RESOURCE, NAMESPACE, config_map(storage_path), ("data",)),
    ):
        await _apply(store, resource, namespace, wanted, fields)


async def _apply(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    wanted: Object,
    fields: Sequence[str],
) -> None:
    try:
        await store.create(resource, namespace, wanted)
        return
    except StatusError as e:
        if e.code != 409:
            raise

    def put_back(current: Object) -> Object:
        annotations = current["metadata"].setdefault("annotations", {})
        annotations.update(wanted["metadata"].get("annotations") or {})
        for name in fields:
            current[name] = wanted[name]
        return current

    await store.guaranteed_update(resource, namespace, name_of(wanted), put_back)


def node_paths(config_data: Mapping[str, Any] | None, node: str) -> list[str]:
    """
    The node's storage paths from ``config.json``'s ``nodePathMap`` (its
    entry, else the default one).

    :raises ValueError: in the provisioner's words.
    """
    try:
        config = json.loads((config_data or {}).get("config.json") or "")
    except ValueError as e:
        raise ValueError(f"failed to load the configuration: {e}") from None
    by_node = {
        str(entry.get("node")): [str(path) for path in entry.get("paths") or ()]
        for entry in config.get("nodePathMap") or ()
        if isinstance(entry, dict)
    }
    paths = by_node.get(node, by_node.get(DEFAULT_NODE))
    if not paths:
        raise ValueError(f"config doesn't contain node {node}, and no {DEFAULT_NODE} available")
    return paths


def volume_for(
    claim: Mapping[str, Any],
    storage_class: Mapping[str, Any],
    node: Mapping[str, Any],
    base: str,
) -> Object:
    """
    The volume the provisioner makes for C{claim} on C{node}, under C{base}.

    :raises ValueError: the claim asks for what the provisioner cannot make.
    """
    modes = get_path(claim, "spec", "accessModes") or []
    if any(mode not in ("ReadWriteOnce", "ReadWriteOncePod") for mode in modes):
        raise ValueError(
            "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes"
        )
    if get_path(claim, "spec", "volumeMode") == "Block":
        raise ValueError("local-path-provisioner only supports Filesystem volumes")
    name = f"pvc-{uid_of(claim)}"
    path = posixpath.join(base, f"{name}_{namespace_of(claim)}_{name_of(claim)}")
    volume_type = (metadata(claim).get("annotations") or {}).get("volumeType") or (
        metadata(storage_class).get("annotations") or {}
    ).get("defaultVolumeType", "hostPath")
    source: Object
    if volume_type.lower() == "local":
        source = {"local": {"path": path}}
    elif volume_type.lower() == "hostpath":
        source = {"hostPath": {"path": path, "type": "DirectoryOrCreate"}}
    else:
        raise ValueError(f"there is no supported volumeType {volume_type}")
    node_name = name_of(node)
    value = (metadata(node).get("labels") or {}).get(HOSTNAME) or node_name
    requested = get_path(claim, "spec", "resources", "requests", "storage") or "0"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: PROVISIONER, VOLUME_NODE: node_name},
        },
        "spec": {
            **source,
            "capacity": {"storage": requested},
            "accessModes": list(modes),
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "storageClassName": name_of(storage_class),
            "claimRef": claim_ref(claim),
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": HOSTNAME, "operator": "In", "values": [value]}
                            ]
                        }
                    ]
                }
            },
        },
    }


def volume_path(volume: Mapping[str, Any]) -> str:
    """Where a volume the provisioner made keeps its data on its node."""
    spec = volume.get("spec") or {}
    return str((spec.get("local") or spec.get("hostPath") or {}).get("path") or "")


def delete_helper(template: Mapping[str, Any], volume: Mapping[str, Any]) -> Object:
    """
    The pod that runs the ConfigMap's ``teardown`` script for C{volume} on
    its node, from C{template} (``helperPod.yaml``), as the provisioner builds it.

    :raises ValueError: the volume names no node, or the template no container.
    """
    node = (metadata(volume).get("annotations") or {}).get(VOLUME_NODE)
    if not node:
        raise ValueError("configuration error, no node was specified")
    path = volume_path(volume)
    parent = posixpath.dirname(path)
    size = get_path(volume, "spec", "capacity", "storage") or "0"
    try:
        size_bytes = str(int(parse_quantity(size).value))
    except ValueError:
        size_bytes = "0"
    pod: Object = json.loads(json.dumps(template))
    spec = pod.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers or not isinstance(containers[0], dict):
        raise ValueError("helper pod template has no container")
    pod["metadata"] = {"name": DELETE_HELPER + name_of(volume), "namespace": NAMESPACE}
    spec.update(restartPolicy="Never", nodeName=node, automountServiceAccountToken=False)
    spec["tolerations"] = [*(spec.get("tolerations") or ()), {"operator": "Exists"}]
    spec["volumes"] = [
        *(spec.get("volumes") or ()),
        {"name": "helper-data-volume", "hostPath": {"path": parent, "type": "DirectoryOrCreate"}},
        {
            "name": "script",
            "configMap": {
                "name": CONFIG_MAP,
                "items": [{"key": key, "path": key} for key in ("setup", "teardown")],
            },
        },
    ]
    container = containers[0]
    container["command"] = ["/bin/sh", "/script/teardown"]
    container["args"] = ["-p", path, "-s", size_bytes, "-m", "Filesystem", "-a", "delete"]
    container["env"] = [
        *(container.get("env") or ()),
        {"name": "VOL_DIR", "value": path},
        {"name": "VOL_MODE", "value": "Filesystem"},
        {"name": "VOL_SIZE_BYTES", "value": size_bytes},
    ]
    container["volumeMounts"] = [
        *(container.get("volumeMounts") or ()),
        {"name": "helper-data-volume", "mountPath": parent},
        {"name": "script", "mountPath": "/script"},
    ]
    return pod


def _template(config_data: Mapping[str, Any] | None) -> Object:
    """The ConfigMap's ``helperPod.yaml``. :raises ValueError: in the provisioner's words."""
    import yaml  # Only when a volume is torn down.

    try:
        template = yaml.safe_load((config_data or {}).get("helperPod.yaml") or "")
    except yaml.YAMLError as e:
        raise ValueError(f"failed to load the helper pod template: {e}") from None
    if not isinstance(template, dict):
        raise ValueError("failed to load the helper pod template: not an object")
    return template


class LocalPathProvisioner(StorageKinds, Controller):
    """Makes the volumes of claims handed to ``rancher.io/local-path``, and deletes them."""

    label = "local-path provisioner"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, registry: Registry, host: str = ""
    ) -> None:
        StorageKinds.__init__(self, informers, registry)
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.config_maps = informers.for_resource(configmaps.RESOURCE, _CONFIG)
        self.helpers = informers.for_resource(pods.RESOURCE, _HELPERS)
        Controller.__init__(
            self,
            store.clock,
            [*self.storage_informers, self.nodes, self.config_maps, self.helpers],
        )
        self.store = store
        self.recorder = EventRecorder(store, store.clock, f"{PROVISIONER}_{host}", "")
        self.add_handler(self.claims, self.enqueue_handler())
        self.add_handler(self.volumes, each_change(self._volume_changed))
        self.add_handler(self.helpers, each_change(self._helper_changed))

    def _volume_changed(self, volume: Object) -> None:
        # Released: to tear down; then deleted: its helper pod to remove.
        if _ours(volume) and get_path(volume, "status", "phase") == "Released":
            self.enqueue(_DELETE + name_of(volume))

    def _helper_changed(self, pod: Object) -> None:
        self.enqueue(_DELETE + name_of(pod)[len(DELETE_HELPER) :])

    async def sync(self, key: str) -> None:
        if key.startswith(_DELETE):
            await self._delete(key[len(_DELETE) :])
            return
        claim = self.claims.get(key)
        if claim is None or is_deleting(claim) or get_path(claim, "spec", "volumeName"):
            return
        annotations = metadata(claim).get("annotations") or {}
        handed = annotations.get(STORAGE_PROVISIONER) or annotations.get(BETA_STORAGE_PROVISIONER)
        storage_class = self.class_of(claim)
        if handed != PROVISIONER or (storage_class or {}).get("provisioner") != PROVISIONER:
            return
        assert storage_class is not None
        name = f"pvc-{uid_of(claim)}"
        if self.volumes.get(name) is not None:
            return
        self.recorder.emit(
            claim,
            NORMAL,
            "Provisioning",
            f'External provisioner is provisioning volume for claim "{object_key(claim)}"',
        )
        try:
            volume = self._volume(claim, storage_class, annotations.get(SELECTED_NODE))
        except ValueError as e:
            self.recorder.emit(
                claim,
                WARNING,
                "ProvisioningFailed",
                f'failed to provision volume with StorageClass "{name_of(storage_class)}": {e}',
            )
            return
        if not await create_if_absent(self.store, self.volume_resource, None, volume):
            return  # made already
        self.recorder.emit(
            claim, NORMAL, "ProvisioningSucceeded", f"Successfully provisioned volume {name}"
        )

    def _volume(self, claim: Object, storage_class: Object, node_name: str | None) -> Object:
        if not node_name:
            raise ValueError("configuration error, no node was specified")
        node = self.nodes.get(node_name)
        if node is None:
            raise ValueError(f'nodes "{node_name}" not found')
        config = self.config_maps.get(join_key(NAMESPACE, CONFIG_MAP))
        base = node_paths((config or {}).get("data"), node_name)[0]
        return volume_for(claim, storage_class, node, base)

    def _runs_pods(self, volume: Object) -> bool:
        """Whether the volume's node is there and runs pods (has a container runtime)."""
        node = self.nodes.get(str((metadata(volume).get("annotations") or {}).get(VOLUME_NODE)))
        return runs_pods(node)

    async def _delete(self, name: str) -> None:
        """
        Tear a released volume down on its node with a helper pod, delete the
        volume once the helper succeeded, and the helper once the volume is
        gone: so that no helper is made again for a volume already torn down.
        """
        key = _DELETE + name
        volume = self.volumes.get(name)
        helper = self.helpers.get(join_key(NAMESPACE, DELETE_HELPER + name))
        if volume is None or is_deleting(volume):
            if helper is not None and not is_deleting(helper):
                await delete_if_present(self.store, pods.RESOURCE, NAMESPACE, name_of(helper))
            return
        if (
            not _ours(volume)
            or get_path(volume, "status", "phase") != "Released"
            or get_path(volume, "spec", "persistentVolumeReclaimPolicy") != "Delete"
            or (helper is not None and is_deleting(helper))  # a helper given up on, going
        ):
            return
        if helper is None and not self._runs_pods(volume):
            # No helper could run there (k3s's nodes all can): the data stays on the node.
            self._log.info(
                "Deleting volume {name}: its node runs no pods, its data stays there", name=name
            )
            await delete_if_present(self.store, self.volume_resource, None, name)
            return
        if helper is None:
            config = self.config_maps.get(join_key(NAMESPACE, CONFIG_MAP))
            try:
                pod = delete_helper(_template((config or {}).get("data")), volume)
            except ValueError as e:
                self.recorder.emit(volume, WARNING, "VolumeFailedDelete", str(e))
                self.queue.add_rate_limited(key)
                return
            if await create_if_absent(self.store, pods.RESOURCE, NAMESPACE, pod):
                self.queue.add_after(key, HELPER_TIMEOUT)
            return
        if get_path(helper, "status", "phase") == "Succeeded":
            self._log.info("Deleting volume {name}: its directory is gone", name=name)
            await delete_if_present(self.store, self.volume_resource, None, name)
            self.queue.forget(key)
            return
        created = parse_time(metadata(helper).get("creationTimestamp"))
        waited = self.clock.seconds() - (created if created is not None else 0.0)
        if waited < HELPER_TIMEOUT:
            self.queue.add_after(key, HELPER_TIMEOUT - waited)
            return
        await delete_if_present(self.store, pods.RESOURCE, NAMESPACE, name_of(helper))
        message = f"create process timeout after {HELPER_TIMEOUT} seconds"
        self.recorder.emit(volume, WARNING, "VolumeFailedDelete", message)
        self.queue.add_rate_limited(key)


def _ours(volume: Mapping[str, Any]) -> bool:
    return (metadata(volume).get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER
