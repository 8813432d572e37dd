"""
How k3s records etcd snapshots in the cluster: one ``ETCDSnapshotFile``
(``k3s.cattle.io/v1``, cluster-scoped) per snapshot file, named
``local-<file name>-<6 hex of sha256(node + location)>``, labelled with the
node that keeps it, with ``spec.snapshotName``, ``spec.nodeName``,
``spec.location`` (``file://<path>``) and ``status.size``,
``status.creationTime``, ``status.readyToUse``.

The files in the snapshot directory are the truth: L{SnapshotRecords.reconcile}
creates the records of new files and deletes those of this node whose file
is gone, after every save, delete and prune (scheduled or asked for by
``k3s etcd-snapshot``) and at start.

Extra metadata, as k3s 1.32: when ConfigMap
``kube-system/k3s-etcd-snapshot-extra-metadata`` exists as a snapshot is
taken, its ``data`` is kept as JSON in ``db/.metadata/<snapshot>``, becomes
the record's ``spec.metadata``, and the snapshot gets an entry in the legacy
``kube-system/k3s-etcd-snapshots`` ConfigMap (``local-<snapshot>``: k3s's
JSON with the metadata base64-encoded); 1.32 writes entries only for such
snapshots, and drops an entry with its snapshot.  Left out: the
``snapshot-token-hash`` annotation, the wrangler finalizer, the
``ETCDSnapshotCreated`` Events and S3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import partial
from pathlib import Path

from k3stw.apiserver.kinds import configmaps, crds
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import create_if_absent, delete_if_present, update_status_if_present
from k3stw.etcd.snapshots import snapshot_time
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, name_of
from k3stw.machinery.times import rfc3339

GROUP = "k3s.cattle.io"
KIND = "ETCDSnapshotFile"
NAMESPACE = "kube-system"
#: The ConfigMap whose data each new snapshot keeps, and the legacy record of those snapshots.
EXTRA_METADATA = "k3s-etcd-snapshot-extra-metadata"
LEGACY_CONFIGMAP = "k3s-etcd-snapshots"
_NOT_KEY_CHARACTERS = re.compile(r"[^-._a-zA-Z0-9]")
STORAGE_NODE = "etcd.k3s.cattle.io/snapshot-storage-node"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def etcdsnapshotfile_crd() -> Object:
    """``etcdsnapshotfiles.k3s.cattle.io`` as k3s installs it (status subresource, its columns)."""
    string = {"type": "string"}
    spec = {
        "type": "object",
        "required": ["location", "nodeName", "snapshotName"],
        "properties": {
            "snapshotName": string,
            "nodeName": string,
            "location": string,
            "metadata": {"type": "object", "additionalProperties": string},
            "s3": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    status = {
        "type": "object",
        "properties": {
            "size": {"x-kubernetes-int-or-string": True},
            "creationTime": {"type": "string", "format": "date-time"},
            "readyToUse": {"type": "boolean"},
            "error": {"type": "object", "properties": {"time": string, "message": string}},
        },
    }
    columns = [
        {"jsonPath": ".spec.snapshotName", "name": "SnapshotName", "type": "string"},
        {"jsonPath": ".spec.nodeName", "name": "Node", "type": "string"},
        {"jsonPath": ".spec.location", "name": "Location", "type": "string"},
        {"jsonPath": ".status.size", "name": "Size", "type": "string"},
        {"jsonPath": ".status.creationTime", "name": "CreationTime", "type": "date"},
    ]
    properties: dict[str, object] = {"spec": spec, "status": status}
    return crds.k3s_crd(GROUP, KIND, "etcdsnapshotfiles", "Cluster", properties, columns, True)


def record_name(file_name: str, node: str, location: str, taken_at: float) -> str:
    """k3s's object name of a local snapshot file."""
    digest = hashlib.sha256((node + location).encode()).hexdigest()[:6]
    name = f"local-{file_name.lower()}"
    if len(name) + 7 > 253 or not _DNS_SUBDOMAIN.match(name):
        suffix = ".zip" if file_name.endswith(".zip") else ""
        name = f"local-etcd-snapshot-{node.split('.')[0].lower()}-{int(taken_at)}{suffix}"
    return f"{name}-{digest}"


def read_metadata(metadata_dir: Path | None, name: str) -> dict[str, str] | None:
    """The extra metadata kept for a snapshot, if any."""
    if metadata_dir is None:
        return None
    try:
        data = json.loads((metadata_dir / name).read_bytes())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def snapshot_record(path: Path, node: str, metadata_dir: Path | None = None) -> Object:
    """The ``ETCDSnapshotFile`` of one local snapshot file (C{metadata_dir}: its extra metadata)."""
    location = path.absolute().as_uri()
    taken_at = snapshot_time(path)
    spec: Object = {"snapshotName": path.name, "nodeName": node, "location": location}
    metadata = read_metadata(metadata_dir, path.name)
    if metadata is not None:
        spec["metadata"] = metadata
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": KIND,
        "metadata": {
            "name": record_name(path.name, node, location, taken_at),
            "labels": {STORAGE_NODE: node},
        },
        "spec": spec,
        "status": {
            "size": str(path.stat().st_size),
            "creationTime": rfc3339(taken_at),
            "readyToUse": True,
        },
    }


def legacy_key(snapshot: str) -> str:
    """A snapshot's key in ``k3s-etcd-snapshots``."""
    return _NOT_KEY_CHARACTERS.sub("_", f"local-{snapshot}")


def legacy_entry(record: Object) -> str:
    """k3s's JSON for a snapshot in ``k3s-etcd-snapshots``."""
    spec, status = record["spec"], record["status"]
    metadata = json.dumps(spec.get("metadata") or {}, separators=(",", ":")).encode()
    entry = {
        "name": spec["snapshotName"],
        "location": spec["location"],
        "metadata": base64.b64encode(metadata).decode(),
        "nodeName": spec["nodeName"],
        "createdAt": status["creationTime"],
        "size": int(status["size"]),
        "status": "successful",
        "compressed": spec["snapshotName"].endswith(".zip"),
    }
    return json.dumps(entry, separators=(",", ":"))


def snapshot_files(directory: Path) -> list[Path]:
    """The snapshot files of a directory (no dotfiles, no subdirectories)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def _with_status(status: Object, current: Object) -> Object:
    return {**current, "status": status}


class SnapshotRecords:
    """This node's ``ETCDSnapshotFile`` records, kept equal to its snapshot directory."""

    _log = Logger()

    def __init__(
        self, store: ObjectStore, registry: Registry, node: str, metadata_dir: Path | None = None
    ) -> None:
        """:param metadata_dir: ``db/.metadata``, where each snapshot's extra metadata is kept."""
        self.store = store
        self.registry = registry
        self.node = node
        self.metadata_dir = metadata_dir

    async def extra_metadata(self) -> dict[str, str] | None:
        """The data of ``k3s-etcd-snapshot-extra-metadata``, if it exists."""
        try:
            found = await self.store.get(configmaps.RESOURCE, NAMESPACE, EXTRA_METADATA)
        except StatusError as e:
            if e.code == 404:
                return None
            raise
        return dict(found.get("data") or {})

    async def _resource(self) -> ResourceType:
        await create_if_absent(self.store, crds.RESOURCE, None, etcdsnapshotfile_crd())
        resource = self.registry.by_kind(GROUP, KIND)
        if resource is None:
            raise StatusError(404, f"the server could not find the requested resource ({GROUP})")
        return resource

    async def reconcile(self, directory: Path) -> None:
        """Create the records of new files, delete those of files that are gone."""
        resource = await self._resource()
        wanted = {}
        for path in snapshot_files(directory):
            record = snapshot_record(path, self.node, self.metadata_dir)
            wanted[name_of(record)] = record
        listed = await self.store.list(resource, None)
        node = self.node
        present = {
            name_of(item)
            for item in listed.items
            if (item["metadata"].get("labels") or {}).get(STORAGE_NODE) == node
        }
        for name, record in wanted.items():
            if name in present:
                continue
            self._log.info(
                "Creating ETCDSnapshotFile for {name}", name=record["spec"]["snapshotName"]
            )
            await create_if_absent(self.store, resource, None, record)
            await update_status_if_present(
                self.store, resource, None, name, partial(_with_status, record["status"])
            )
        for name in present - wanted.keys():
            self._log.info("Deleting ETCDSnapshotFile for {name}", name=name)
            await delete_if_present(self.store, resource, None, name)
        await self._legacy(list(wanted.values()))

    async def _legacy(self, records: list[Object]) -> None:
        """This node's entries in ``k3s-etcd-snapshots``: its snapshots with extra metadata."""
        entries = {
            legacy_key(r["spec"]["snapshotName"]): legacy_entry(r)
            for r in records
            if r["spec"].get("metadata") is not None
        }
        node = self.node

        def ours(value: str) -> bool:
            try:
                return bool(json.loads(value).get("nodeName") == node)
            except (ValueError, AttributeError):
                return False

        def update(current: Object) -> Object:
            data = {k: v for k, v in (current.get("data") or {}).items() if not ours(v)}
            return {**current, "data": {**data, **entries}}

        try:
            await self.store.guaranteed_update(
                configmaps.RESOURCE, NAMESPACE, LEGACY_CONFIGMAP, update
            )
        except StatusError as e:
            if e.code != 404:
                raise
            if entries:
                configmap = {"metadata": {"name": LEGACY_CONFIGMAP}, "data": entries}
                await create_if_absent(self.store, configmaps.RESOURCE, NAMESPACE, configmap)
