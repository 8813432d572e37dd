"""
k3s's deploy controller: the manifests under ``<data-dir>/server/manifests``
(subdirectories too; ``.yaml``, ``.yml``, ``.json``, no dotfiles) applied and
kept applied, each tracked by an ``Addon`` (``k3s.cattle.io/v1``, in
``kube-system``, named after the file up to its first ``.``) whose
``spec.source`` is the file and ``spec.checksum`` the SHA-256 of what was last
applied.

Every L{INTERVAL} seconds the directory is walked, in path order, as k3s
does (no inotify): the first pass applies every file, later passes only files
whose mtime changed and whose checksum differs from the Addon's.  A file fails
alone: its Addon gets a Warning Event (``ParseManifestFailed``,
``ApplyManifestFailed``), the others go on, and it is tried again on the next
pass.  ``X.skip`` makes ``X`` ignored; a file whose name (without extension)
or a parent directory is in ``--disable`` has its objects and Addon deleted,
then the file itself.

Objects are applied as wrangler's apply does for k3s: each carries the
``objectset.rio.cattle.io/*`` annotations naming its Addon and the
``objectset.rio.cattle.io/hash`` label of the set; the write itself is a
server-side apply by the ``deploy`` field manager (forced), which removes the
fields a new version of the file no longer sets.  Objects of the set that a
file no longer lists are deleted (the kinds to look in are the file's and
those recorded in the Addon's ``addon.k3s.cattle.io/gvks`` annotation).

Unlike k3s 1.32, where a file removed from the directory leaves its objects
in place, a removed file's objects and Addon are deleted (as the issue asks):
in a cluster of servers, every server must then hold the same manifests.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.kinds import crds
from k3stw.apiserver.patch.apply import apply_server_side
from k3stw.apiserver.patch.errors import PatchError
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore, merge_update
from k3stw.controllers import TRANSIENT, create_if_absent, delete_if_present
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, copy_json, name_of, namespace_of
from k3stw.machinery.timing import PeriodicJob

#: How often the directory is walked (k3s's 15 s).
INTERVAL = 15.0
COMPONENT = "deploy"
NAMESPACE = "kube-system"
GROUP = "k3s.cattle.io"
GVK_ANNOTATION = "addon.k3s.cattle.io/gvks"
APPLIED = "objectset.rio.cattle.io/applied"
SET_ID = "objectset.rio.cattle.io/id"
OWNER_GVK = "objectset.rio.cattle.io/owner-gvk"
OWNER_NAME = "objectset.rio.cattle.io/owner-name"
OWNER_NAMESPACE = "objectset.rio.cattle.io/owner-namespace"
SET_HASH = "objectset.rio.cattle.io/hash"
ADDON_GVK = "k3s.cattle.io/v1, Kind=Addon"
_EXTENSIONS = (".yaml", ".yml", ".json")
_MANAGER = "deploy"
#: Where wrangler puts a namespaced object its manifest gives no namespace.
_DEFAULT_NAMESPACE = "default"


def addon_crd() -> Object:
    """``addons.k3s.cattle.io`` as k3s installs it (no status subresource)."""
    string = {"type": "string"}
    spec = {"type": "object", "properties": {"checksum": string, "source": string}}
    columns = [
        {"jsonPath": ".spec.source", "name": "Source", "type": "string"},
        {"jsonPath": ".spec.checksum", "name": "Checksum", "type": "string"},
    ]
    return crds.k3s_crd(GROUP, "Addon", "addons", "Namespaced", {"spec": spec}, columns)


async def install_addon_crd(store: ObjectStore) -> None:
    """Create the Addon CRD if it is missing (k3s creates its CRDs at every start)."""
    await create_if_absent(store, crds.RESOURCE, None, addon_crd())


def addon_name(path: Path) -> str:
    """The Addon of a file: its name up to the first ``.``."""
    return path.name.split(".", 1)[0]


def checksum(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def set_hash(addon: str) -> str:
    """wrangler's set label: SHA-1 of the set ID, owner GVK, name and namespace."""
    digest = hashlib.sha1(usedforsecurity=False)
    for part in ("", ADDON_GVK, addon, NAMESPACE):
        digest.update(part.encode())
    return digest.hexdigest()


def parse_manifest(content: bytes) -> list[Object]:
    """
    The objects of a manifest: YAML (or JSON) documents, ``List`` kinds expanded.

    :raises ValueError: a document is not YAML, not an object, or lacks apiVersion/kind.
    """
    # PyYAML (about a megabyte) loads with the first manifest, not with every server.
    import yaml

    try:
        documents = list(yaml.safe_load_all(content))
    except yaml.YAMLError as e:
        raise ValueError(f"error converting YAML to JSON: {e}") from None
    objects: list[Object] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ValueError(f"cannot unmarshal {type(document).__name__} into an object")
        items = document.get("items")
        if str(document.get("kind", "")).endswith("List") and isinstance(items, list):
            objects.extend(item for item in items if isinstance(item, dict))
        else:
            objects.append(document)
    for obj in objects:
        if not obj.get("kind"):
            raise ValueError("Object 'Kind' is missing in " + json.dumps(obj)[:200])
        if not obj.get("apiVersion"):
            raise ValueError("Object 'apiVersion' is missing in " + json.dumps(obj)[:200])
    return objects


def _gvk(obj: Object) -> str:
    return f"{obj['apiVersion']}, Kind={obj['kind']}"


def _split_gvk(text: str) -> tuple[str, str] | None:
    """``group/version, Kind=K`` as (apiVersion, kind)."""
    version, _, kind = text.partition(", Kind=")
    return (version.strip(), kind) if version and kind else None


@dataclass(frozen=True)
class ManifestFile:
    """A file found in the directory; C{linked} if found through a symlinked directory."""

    path: Path
    mtime: float
    linked: bool = False


class DeployController(MultiService):
    """The manifests directory walked every L{INTERVAL} seconds, under the leader's Lease."""

    _log = Logger()

    def __init__(
        self,
        store: ObjectStore,
        registry: Registry,
        base: Path,
        disables: Iterable[str],
        recorder: EventRecorder,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self.store = store
        self.registry = registry
        self.base = base
        self.disables = frozenset(disables)
        self.recorder = recorder
        self._mtimes: dict[Path, float] = {}
        self._force = True
        PeriodicJob(
            clock, INTERVAL, self.scan, "process the manifests", expected=TRANSIENT
        ).setServiceParent(self)

    def startService(self) -> None:
        # A new term of leadership applies everything again, as k3s does at start.
        self._force = True
        self._mtimes.clear()
        super().startService()

    @property
    def addons(self) -> ResourceType:
        resource = self.registry.by_kind(GROUP, "Addon")
        if resource is None:
            raise StatusError(404, f"the server could not find the requested resource ({GROUP})")
        return resource

    # The directory

    def _walk(self) -> list[ManifestFile]:
        found: list[ManifestFile | None] = []
        for root, dirs, names in os.walk(self.base, followlinks=False):
            top = Path(root) == self.base
            for name in list(dirs) if top else ():
                # Top-level symlinked directories are followed, as k3s does.
                if (Path(root) / name).is_symlink():
                    for sub, _, files in os.walk(Path(root) / name, followlinks=True):
                        found.extend(self._entry(Path(sub) / f, linked=True) for f in files)
            found.extend(self._entry(Path(root) / name) for name in names)
        return sorted((f for f in found if f is not None), key=lambda f: str(f.path))

    def _entry(self, path: Path, linked: bool = False) -> ManifestFile | None:
        try:
            return ManifestFile(path, path.stat().st_mtime, linked)
        except OSError:
            return None

    def _disabled(self, path: Path) -> bool:
        relative = path.relative_to(self.base)
        if any(part in self.disables for part in relative.parts[:-1]):
            return True
        return path.suffix.lower() in _EXTENSIONS and path.stem in self.disables

    @staticmethod
    def _handled(path: Path) -> bool:
        return not path.name.startswith(".") and path.suffix.lower() in _EXTENSIONS

    async def scan(self) -> None:
        """One pass over the directory; a file's failure is logged, never stops the others."""
        files = self._walk() if self.base.is_dir() else []
        skips = {f.path.name[: -len(".skip")] for f in files if f.path.name.endswith(".skip")}
        failed = False
        present: set[str] = set()
        for entry in files:
            path = entry.path
            try:
                if self._disabled(path):
                    # A file reached through a symlinked directory is not ours to remove.
                    await self.delete(path, remove_file=not entry.linked)
                    continue
                if path.name in skips or not self._handled(path):
                    if path.name in skips:
                        present.add(str(path))
                    continue
                present.add(str(path))
                if not self._force and self._mtimes.get(path) == entry.mtime:
                    continue
                await self.deploy(path, compare_checksum=not self._force)
                self._mtimes[path] = entry.mtime
            except (*TRANSIENT, OSError, ValueError) as e:
                failed = True
                self._log.error(
                    "Failed to process config: failed to process {path}: {error}",
                    path=str(path),
                    error=getattr(e, "message", str(e)),
                )
        try:
            await self._forget_removed(present)
        except TRANSIENT as e:
            failed = True
            self._log.error("Failed to process config: {error}", error=str(e))
        self._force = failed and self._force

    async def _forget_removed(self, present: set[str]) -> None:
        """Delete what the files no longer in the directory made, and their Addons."""
        base = str(self.base) + os.sep
        for addon in (await self.store.list(self.addons, NAMESPACE)).items:
            source = str((addon.get("spec") or {}).get("source") or "")
            if source.startswith(base) and source not in present:
                await self.delete(Path(source), remove_file=False)
                self._mtimes.pop(Path(source), None)

    # Applying

    async def _existing_addon(self, name: str) -> Object | None:
        try:
            return await self.store.get(self.addons, NAMESPACE, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return None

    async def _addon(self, path: Path) -> Object:
        """The file's Addon, created first if need be (its Events need its uid)."""
        name = addon_name(path)
        addon = await self._existing_addon(name)
        if addon is None:
            wanted = {"metadata": {"name": name}, "spec": {"source": str(path)}}
            addon = await self.store.create(self.addons, NAMESPACE, wanted)
        return addon

    async def deploy(self, path: Path, compare_checksum: bool) -> None:
        """Apply one file under its Addon; raises what made it fail (already recorded)."""
        addon = await self._addon(path)
        spec = addon.get("spec") or {}
        where = repr(str(path))
        # What a failure at each step is recorded as, in k3s's reasons and words.
        failure = ("ReadManifestFailed", "Read manifest at {where} failed: {error}")
        try:
            content = path.read_bytes()
            digest = checksum(content)
            if compare_checksum and (digest, str(path)) == (
                spec.get("checksum"),
                spec.get("source"),
            ):
                return
            failure = ("ParseManifestFailed", "Parse manifest at {where} failed: {error}")
            objects = parse_manifest(content)
            await self._event(addon, NORMAL, "ApplyingManifest", f"Applying manifest at {where}")
            failure = ("ApplyManifestFailed", "Applying manifest at {where} failed: {error}")
            await self._apply(name_of(addon), objects, self._recorded_gvks(addon))
        except (OSError, StatusError, ValueError) as e:
            reason, message = failure
            error = getattr(e, "message", str(e))
            await self._event(addon, WARNING, reason, message.format(where=where, error=error))
            raise
        await self._event(addon, NORMAL, "AppliedManifest", f"Applied manifest at {where}")
        gvks = ";".join(sorted({_gvk(obj) for obj in objects}))

        def applied(current: Object) -> Object:
            current.setdefault("spec", {}).update(source=str(path), checksum=digest)
            current["metadata"].setdefault("annotations", {})[GVK_ANNOTATION] = gvks
            return current

        await self.store.guaranteed_update(self.addons, NAMESPACE, name_of(addon), applied)

    async def delete(self, path: Path, remove_file: bool) -> None:
        """Delete what a file made (an empty apply), the file if asked, then its Addon."""
        name = addon_name(path)
        addon = await self._existing_addon(name)
        gvks = self._recorded_gvks(addon) if addon is not None else set()
        with contextlib.suppress(OSError, ValueError):
            gvks |= {_gvk(obj) for obj in parse_manifest(path.read_bytes())}
        await self._apply(name, [], gvks)
        if remove_file:
            path.unlink(missing_ok=True)
        if addon is not None:
            await self._event(
                addon, NORMAL, "DeletingManifest", f"Deleting manifest at {str(path)!r}"
            )
            await delete_if_present(self.store, self.addons, NAMESPACE, name)

    @staticmethod
    def _recorded_gvks(addon: Object) -> set[str]:
        text = ((addon.get("metadata") or {}).get("annotations") or {}).get(GVK_ANNOTATION, "")
        return {gvk for gvk in text.split(";") if _split_gvk(gvk)}

    def _resource(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for resource in self.registry:
            if resource.group == group and resource.version == version and resource.kind == kind:
                return resource
        return None

    async def _apply(self, addon: str, objects: list[Object], previous: set[str]) -> None:
        """wrangler's apply of the set: each object applied, the set's others deleted."""
        label = set_hash(addon)
        wanted: set[tuple[str, str | None, str]] = set()
        plans = []
        for obj in objects:
            resource = self._resource(str(obj["apiVersion"]), str(obj["kind"]))
            if resource is None:
                version = str(obj["apiVersion"])
                raise ValueError(f'no matches for kind "{obj["kind"]}" in version "{version}"')
            namespace = (namespace_of(obj) or _DEFAULT_NAMESPACE) if resource.namespaced else None
            plans.append((resource, namespace, self._desired(obj, addon, label)))
            wanted.add((_gvk(obj), namespace, name_of(obj)))
        for resource, namespace, desired in plans:
            await self._apply_one(resource, namespace, desired)
        for gvk in previous | {_gvk(obj) for obj in objects}:
            split = _split_gvk(gvk)
            resource = self._resource(*split) if split else None
            if resource is None:
                # A kind the server no longer serves (its CRD gone): nothing to prune there.
                continue
            listed = await self.store.list(
                resource, None, lambda o: (o["metadata"].get("labels") or {}).get(SET_HASH) == label
            )
            for obj in listed.items:
                namespace = obj["metadata"].get("namespace")
                if (gvk, namespace, name_of(obj)) not in wanted:
                    await delete_if_present(self.store, resource, namespace, name_of(obj))

    @staticmethod
    def _desired(obj: Object, addon: str, label: str) -> Object:
        desired: Object = copy_json(obj)
        metadata = desired.setdefault("metadata", {})
        applied = base64.b64encode(gzip.compress(json.dumps(obj, sort_keys=True).encode(), mtime=0))
        metadata.setdefault("annotations", {}).update(
            {
                APPLIED: applied.decode(),
                SET_ID: "",
                OWNER_GVK: ADDON_GVK,
                OWNER_NAME: addon,
                OWNER_NAMESPACE: NAMESPACE,
            }
        )
        metadata.setdefault("labels", {})[SET_HASH] = label
        return desired

    async def _apply_one(
        self, resource: ResourceType, namespace: str | None, desired: Object
    ) -> None:
        now = self.store.now()
        rules = resource.strategy.merge_rules
        name = name_of(desired)
        if not name:
            raise ValueError(f"{resource.kind}: metadata.name: Required value: name is required")
        if resource.namespaced:
            desired["metadata"]["namespace"] = namespace
        try:
            created = apply_server_side(None, desired, _MANAGER, True, now=now, rules=rules)
            created.setdefault("metadata", {})["name"] = name
            if await create_if_absent(self.store, resource, namespace, created):
                return

            def merge(live: Object) -> Object:
                applied = apply_server_side(live, desired, _MANAGER, True, now=now, rules=rules)
                return merge_update(resource, live, applied, None)

            await self.store.guaranteed_update(resource, namespace, name, merge)
        except PatchError as e:
            raise ValueError(str(e)) from None

    async def _event(self, addon: Object, kind: str, reason: str, message: str) -> None:
        await self.recorder.emit(addon, kind, reason, message)
