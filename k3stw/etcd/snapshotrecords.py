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

The legacy ``kube-system/k3s-etcd-snapshots`` ConfigMap of k3s 1.32 holds
entries only for snapshots that carry extra metadata (the
``k3s-etcd-snapshot-extra-metadata`` ConfigMap); k3stw records no extra
metadata, so it writes no entries there.  Left out: the
``snapshot-token-hash`` annotation, the wrangler finalizer and the
``ETCDSnapshotCreated`` Events.
"""

from __future__ import annotations

import hashlib
import re
from functools import partial
from pathlib import Path

from k3stw.apiserver.kinds import crds
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


def snapshot_record(path: Path, node: str) -> Object:
    """The ``ETCDSnapshotFile`` of one local snapshot file."""
    location = path.absolute().as_uri()
    taken_at = snapshot_time(path)
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": KIND,
        "metadata": {
            "name": record_name(path.name, node, location, taken_at),
            "labels": {STORAGE_NODE: node},
        },
        "spec": {"snapshotName": path.name, "nodeName": node, "location": location},
        "status": {
            "size": str(path.stat().st_size),
            "creationTime": rfc3339(taken_at),
            "readyToUse": True,
        },
    }


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

    def __init__(self, store: ObjectStore, registry: Registry, node: str) -> None:
        self.store = store
        self.registry = registry
        self.node = node

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
            record = snapshot_record(path, self.node)
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
