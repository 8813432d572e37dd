"""
kube-controller-manager's persistentvolume-binder, driven by changes
instead of its 15-second resync:

- a claim without ``spec.volumeName`` is bound to the smallest available
  volume that matches it (class, access modes, volume mode, capacity,
  selector), or to one already reserved for it (``spec.claimRef``); a claim
  of a ``WaitForFirstConsumer`` class waits for the scheduler (a
  ``WaitForFirstConsumer`` event) until it names a node
  (``volume.kubernetes.io/selected-node``) or a volume is reserved for it;
- a claim no volume matches is handed to its class's provisioner
  (``volume.kubernetes.io/storage-provisioner`` and an ``ExternalProvisioning``
  event), or, with no class to provision from, waits (``FailedBinding``);
- binding sets both sides: the volume's ``claimRef`` and phase ``Bound``, the
  claim's ``spec.volumeName``, its annotations ``pv.kubernetes.io/bind-completed``
  and ``pv.kubernetes.io/bound-by-controller`` and its status (``Bound``,
  capacity, access modes);
- a volume whose claim is gone is ``Released``; with ``Retain`` it stays so,
  with ``Delete`` the provisioner that made it deletes it (a volume no
  provisioner made fails, ``VolumeFailedDelete``: no in-tree deleter here).

Left out: ``Recycle``, the ``Lost`` claim's volume coming back, volume
attributes classes, the pv-protection and pvc-protection finalizers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError, not_found
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import Informer, each_change
from k3stw.machinery.labels import LabelSelectorError, label_selector_from_spec
from k3stw.machinery.objects import (
    Object,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    split_key,
    uid_of,
)
from k3stw.machinery.quantity import QuantityError, parse_quantity

#: kube-controller-manager's name for the loop (its events' source).
COMPONENT = "persistentvolume-controller"

SELECTED_NODE = "volume.kubernetes.io/selected-node"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
#: The provisioner name of classes whose volumes are only ever made by hand.
NO_PROVISIONER = "kubernetes.io/no-provisioner"

_CLAIM = "claim:"
_VOLUME = "volume:"


def claim_class(claim: Mapping[str, Any]) -> str:
    return str(get_path(claim, "spec", "storageClassName") or "")


def volume_class(volume: Mapping[str, Any]) -> str:
    return str(get_path(volume, "spec", "storageClassName") or "")


def waits_for_consumer(storage_class: Mapping[str, Any] | None) -> bool:
    """Whether claims of the class are bound only once a pod using them is scheduled."""
    return (storage_class or {}).get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER


def _storage(amounts: Any) -> Any:
    try:
        return parse_quantity((amounts or {}).get("storage", "0")).value
    except QuantityError:
        return None


def reserved_for(volume: Mapping[str, Any], claim: Mapping[str, Any]) -> bool:
    """Whether the volume's ``claimRef`` names the claim (by name, and uid if it has one)."""
    ref = get_path(volume, "spec", "claimRef") or {}
    return (
        ref.get("name") == name_of(claim)
        and (ref.get("namespace") or "") == namespace_of(claim)
        and ref.get("uid", "") in ("", uid_of(claim))
    )


def matches(volume: Mapping[str, Any], claim: Mapping[str, Any]) -> bool:
    """
    Whether the volume could serve the claim, claimed by nobody else (kube's
    ``findMatchingVolume`` without node affinity): class, volume mode, access
    modes, capacity and the claim's selector.
    """
    spec, wanted = volume.get("spec") or {}, claim.get("spec") or {}
    ref = spec.get("claimRef")
    if ref and not reserved_for(volume, claim):
        return False
    phase = get_path(volume, "status", "phase")
    if not ref and (is_deleting(volume) or phase not in (None, "Available")):
        return False
    if volume_class(volume) != claim_class(claim):
        return False
    if (spec.get("volumeMode") or "Filesystem") != (wanted.get("volumeMode") or "Filesystem"):
        return False
    if not set(wanted.get("accessModes") or ()) <= set(spec.get("accessModes") or ()):
        return False
    have, need = _storage(spec.get("capacity")), _storage(get_path(wanted, "resources", "requests"))
    if have is None or need is None or have < need:
        return False
    if wanted.get("selector") is not None:
        try:
            selector = label_selector_from_spec(wanted["selector"])
        except LabelSelectorError:
            return False
        if not selector.matches(metadata(volume).get("labels") or {}):
            return False
    return True


def best_match(
    volumes: Iterable[Object], claim: Mapping[str, Any], reserved_only: bool = False
) -> Object | None:
    """
    The volume to bind the claim to: one reserved for it, else the smallest
    that matches (none but a reserved one with C{reserved_only}, as when the
    scheduler chooses).
    """
    fitting = [volume for volume in volumes if matches(volume, claim)]
    reserved = [volume for volume in fitting if get_path(volume, "spec", "claimRef")]
    if reserved:
        return reserved[0]
    if reserved_only or not fitting:
        return None
    return min(fitting, key=lambda v: (_storage(get_path(v, "spec", "capacity")), name_of(v)))


def claim_ref(claim: Mapping[str, Any]) -> Object:
    meta = metadata(claim)
    return {
        "kind": "PersistentVolumeClaim",
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "apiVersion": "v1",
        "resourceVersion": meta.get("resourceVersion"),
    }


class StorageKinds:
    """The claims, volumes and classes: their resources and shared informers."""

    def __init__(self, informers: ServerInformers, registry: Registry) -> None:
        self.claim_resource = registry.require("", "v1", "persistentvolumeclaims")
        self.volume_resource = registry.require("", "v1", "persistentvolumes")
        self.class_resource = registry.require("storage.k8s.io", "v1", "storageclasses")
        self.claims = informers.for_resource(self.claim_resource)
        self.volumes = informers.for_resource(self.volume_resource)
        self.classes = informers.for_resource(self.class_resource)

    @property
    def storage_informers(self) -> list[Informer]:
        return [self.claims, self.volumes, self.classes]

    def class_of(self, claim: Mapping[str, Any]) -> Object | None:
        """The claim's StorageClass, if it names one that exists."""
        name = claim_class(claim)
        return self.classes.get(name) if name else None


class PersistentVolumeBinder(StorageKinds, Controller):
    """Binds claims to volumes, and releases the volumes of claims that are gone."""

    label = "persistentvolume-binder"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, registry: Registry, host: str = ""
    ) -> None:
        StorageKinds.__init__(self, informers, registry)
        Controller.__init__(self, store.clock, self.storage_informers)
        self.store = store
        self.recorder = EventRecorder(store, store.clock, COMPONENT, host)
        self.add_handler(
            self.claims,
            each_change(self._claim_changed, deleted=self._claim_deleted),
        )
        self.add_handler(
            self.volumes,
            each_change(self._volume_changed, deleted=self._volume_deleted),
        )

    def _claim_changed(self, claim: Object) -> None:
        self.enqueue(_CLAIM + object_key(claim))

    def _claim_deleted(self, claim: Object) -> None:
        name = get_path(claim, "spec", "volumeName")
        if name:
            self.enqueue(_VOLUME + str(name))

    def _volume_deleted(self, volume: Object) -> None:
        self._enqueue_claim_of(volume)

    def _enqueue_claim_of(self, volume: Object) -> bool:
        """Enqueue the claim the volume's ``claimRef`` names; False if it names none."""
        ref = get_path(volume, "spec", "claimRef") or {}
        if not ref.get("name"):
            return False
        self.enqueue(_CLAIM + join_key(ref.get("namespace") or "", ref["name"]))
        return True

    def _volume_changed(self, volume: Object) -> None:
        self.enqueue(_VOLUME + name_of(volume))
        if self._enqueue_claim_of(volume):
            return
        # An available volume: the claims of its class still waiting may take it.
        for claim in self.claims.cache.list():
            if not get_path(claim, "spec", "volumeName") and claim_class(claim) == volume_class(
                volume
            ):
                self.enqueue(_CLAIM + object_key(claim))

    async def sync(self, key: str) -> None:
        if key.startswith(_CLAIM):
            claim = self.claims.get(key[len(_CLAIM) :])
            if claim is not None and not is_deleting(claim):
                try:
                    await self._sync_claim(claim)
                except StatusError as e:
                    if e.code != 404:
                        raise
        else:
            volume = self.volumes.get(key[len(_VOLUME) :])
            if volume is not None:
                await self._sync_volume(volume)

    # Claims.

    async def _sync_claim(self, claim: Object) -> None:
        name = get_path(claim, "spec", "volumeName")
        if name:
            await self._sync_named_claim(claim, str(name))
            return
        storage_class = self.class_of(claim)
        delayed = waits_for_consumer(storage_class)
        volume = best_match(self.volumes.cache.list(), claim, reserved_only=delayed)
        if volume is not None:
            await self._bind(volume, claim)
            return
        annotations = metadata(claim).get("annotations") or {}
        if delayed and SELECTED_NODE not in annotations:
            await self._claim_pending(claim)
            self.recorder.emit(
                claim,
                NORMAL,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            return
        provisioner = (storage_class or {}).get("provisioner")
        if storage_class is None or not provisioner or provisioner == NO_PROVISIONER:
            await self._claim_pending(claim)
            message = (
                "no persistent volumes available for this claim and no storage class is set"
                if not claim_class(claim)
                else f'storageclass.storage.k8s.io "{claim_class(claim)}" not found'
                if storage_class is None
                else "no volume plugin matched name: kubernetes.io/no-provisioner"
            )
            self.recorder.emit(
                claim,
                WARNING,
                "FailedBinding"
                if storage_class is not None or not claim_class(claim)
                else "ProvisioningFailed",
                message,
            )
            return
        if annotations.get(STORAGE_PROVISIONER) != provisioner:
            claim = await self._update_claim(
                claim,
                lambda c: _annotate(
                    c, {STORAGE_PROVISIONER: provisioner, BETA_STORAGE_PROVISIONER: provisioner}
                ),
            )
        await self._claim_pending(claim)
        self.recorder.emit(
            claim,
            NORMAL,
            "ExternalProvisioning",
            f"Waiting for a volume to be created either by the external provisioner "
            f"'{provisioner}' or manually by the system administrator. If volume creation is "
            f"delayed, please verify that the provisioner is running and correctly registered.",
        )

    async def _sync_named_claim(self, claim: Object, name: str) -> None:
        volume = self.volumes.get(name)
        bound = (metadata(claim).get("annotations") or {}).get(BIND_COMPLETED) == "yes"
        if volume is None:
            if bound and get_path(claim, "status", "phase") != "Lost":
                await self._claim_status(claim, {"phase": "Lost"})
                self.recorder.emit(
                    claim,
                    WARNING,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                )
            elif not bound:
                await self._claim_pending(claim)
            return
        ref = get_path(volume, "spec", "claimRef")
        if ref and not reserved_for(volume, claim):
            await self._claim_pending(claim)
            self.recorder.emit(
                claim,
                WARNING,
                "FailedBinding",
                'volume "' + name + '" already bound to a different claim.',
            )
            return
        await self._bind(volume, claim)

    async def _bind(self, volume: Object, claim: Object) -> None:
        """Both sides: the volume's claimRef and phase, then the claim's volume and status."""
        ref = get_path(volume, "spec", "claimRef") or {}
        if ref.get("uid") != uid_of(claim) or ref.get("name") != name_of(claim):
            by_us = not ref

            def reserve(current: Object) -> Object:
                current["spec"]["claimRef"] = claim_ref(claim)
                if by_us:
                    _annotate(current, {BOUND_BY_CONTROLLER: "yes"})
                return current

            volume = await self.store.guaranteed_update(
                self.volume_resource, None, name_of(volume), reserve
            )
        if get_path(volume, "status", "phase") != "Bound":
            volume = await self.store.guaranteed_update(
                self.volume_resource,
                None,
                name_of(volume),
                lambda v: _set_phase(v, "Bound"),
                subresource="status",
            )
        annotations = metadata(claim).get("annotations") or {}
        if (
            get_path(claim, "spec", "volumeName") != name_of(volume)
            or BIND_COMPLETED not in annotations
        ):
            set_by_us = not get_path(claim, "spec", "volumeName")

            def bind(current: Object) -> Object:
                current["spec"]["volumeName"] = name_of(volume)
                _annotate(current, {BIND_COMPLETED: "yes"})
                if set_by_us:
                    _annotate(current, {BOUND_BY_CONTROLLER: "yes"})
                return current

            claim = await self._update_claim(claim, bind)
        spec = volume.get("spec") or {}
        wanted = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes") or [],
            "capacity": spec.get("capacity") or {},
        }
        status = claim.get("status") or {}
        if any(status.get(k) != v for k, v in wanted.items()):
            await self._claim_status(claim, wanted)

    async def _claim_pending(self, claim: Object) -> None:
        if get_path(claim, "status", "phase") != "Pending":
            await self._claim_status(claim, {"phase": "Pending"})

    async def _claim_status(self, claim: Object, status: Mapping[str, Any]) -> None:
        def write(current: Object) -> Object:
            current.setdefault("status", {}).update(status)
            return current

        await self._update_claim(claim, write, subresource="status")

    async def _update_claim(
        self, claim: Object, mutate: Callable[[Object], Object], subresource: str | None = None
    ) -> Object:
        namespace, name = split_key(object_key(claim))
        uid = uid_of(claim)

        def checked(current: Object) -> Object:
            if uid_of(current) != uid:
                raise not_found("persistentvolumeclaims", "", name)  # replaced: gone
            return mutate(current)

        return await self.store.guaranteed_update(
            self.claim_resource, namespace, name, checked, subresource=subresource
        )

    # Volumes.

    async def _sync_volume(self, volume: Object) -> None:
        ref = get_path(volume, "spec", "claimRef")
        phase = get_path(volume, "status", "phase")
        if not ref:
            if phase != "Available":
                await self._volume_phase(volume, "Available")
            return
        if not ref.get("uid"):
            # Reserved for a claim not yet bound: available to it alone.
            if phase != "Available":
                await self._volume_phase(volume, "Available")
            return
        claim = self.claims.get(join_key(ref.get("namespace") or "", ref.get("name") or ""))
        if claim is not None and uid_of(claim) == ref.get("uid"):
            if get_path(claim, "spec", "volumeName") == name_of(volume) and phase != "Bound":
                await self._volume_phase(volume, "Bound")
            return
        # The claim is gone: release the volume, then reclaim it by its policy.
        if phase not in ("Released", "Failed"):
            volume = await self._volume_phase(volume, "Released")
            phase = "Released"
        policy = get_path(volume, "spec", "persistentVolumeReclaimPolicy") or "Retain"
        if phase != "Released" or policy != "Delete":
            return
        if (metadata(volume).get("annotations") or {}).get(PROVISIONED_BY):
            return  # its provisioner deletes it (and what it holds)
        message = (
            f'error getting deleter volume plugin for volume "{name_of(volume)}": '
            "no deletable volume plugin matched"
        )
        await self._volume_phase(volume, "Failed", message)
        self.recorder.emit(volume, WARNING, "VolumeFailedDelete", message)

    async def _volume_phase(self, volume: Object, phase: str, message: str | None = None) -> Object:
        def write(current: Object) -> Object:
            _set_phase(current, phase)
            if message:
                current["status"]["message"] = message
            else:
                current["status"].pop("message", None)
            return current

        try:
            return await self.store.guaranteed_update(
                self.volume_resource, None, name_of(volume), write, subresource="status"
            )
        except StatusError as e:
            if e.code != 404:
                raise
            return volume


def _annotate(obj: Object, annotations: Mapping[str, str]) -> Object:
    obj.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    return obj


def _set_phase(obj: Object, phase: str) -> Object:
    obj.setdefault("status", {})["phase"] = phase
    return obj


def claims_of(pod: Mapping[str, Any]) -> Sequence[str]:
    """The names of the claims a pod's volumes use, in order."""
    return [
        str(claim)
        for volume in get_path(pod, "spec", "volumes") or ()
        if (claim := get_path(volume, "persistentVolumeClaim", "claimName"))
    ]
