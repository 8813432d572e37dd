"""
etcd snapshots and cluster reset, as k3s takes and names them.

Scheduled snapshots (L{EtcdSnapshots}) follow ``--etcd-snapshot-schedule-cron``
in local time: ``etcdctl snapshot save`` against the server's own member,
named ``<name>-<node>-<unix seconds>`` in ``--etcd-snapshot-dir``
(``db/snapshots``), zipped with ``--etcd-snapshot-compress``, then the
oldest beyond ``--etcd-snapshot-retention`` removed.  The same service
answers ``k3s etcd-snapshot`` (``POST /db/snapshot``, L{EtcdSnapshots.operate}):
save, list, delete and prune; after each, the cluster's ``ETCDSnapshotFile``
records follow the directory (L{k3stw.etcd.snapshotrecords}).

``--cluster-reset`` (L{prepare_reset}) starts the member alone with
``force-new-cluster``; with ``--cluster-reset-restore-path`` it first moves
the data aside and restores the snapshot (``etcdctl snapshot restore``).
Once the member is the only one, the server says so in k3s's words and exits.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread

from k3stw.apiserver.kinds.cronjobs import Schedule
from k3stw.etcd.config import EtcdLayout, EtcdSettings, MemberConfig
from k3stw.files import write_atomically
from k3stw.lifecycle import StartupError
from k3stw.logs import Logger
from k3stw.machinery.processes import CommandFailed, run_command

if TYPE_CHECKING:
    from k3stw.etcd.snapshotrecords import SnapshotRecords

_log = Logger(namespace="k3stw.etcd.snapshots")

#: How long one ``etcdctl snapshot`` may run.
SNAPSHOT_TIMEOUT = 300.0


def snapshot_name(name: str, node: str, when: float) -> str:
    """k3s's file name: ``<name>-<node>-<unix seconds>``."""
    return f"{name}-{node}-{int(when)}"


def snapshot_time(path: Path) -> float:
    """When a snapshot was taken: the time in its name, else its mtime."""
    stem = path.name.removesuffix(".zip")
    try:
        return float(stem.rpartition("-")[2])
    except ValueError:
        return path.stat().st_mtime


def beyond_retention(files: Sequence[Path], prefix: str, retention: int) -> list[Path]:
    """
    The snapshots k3s's retention removes: those named C{prefix}..., newest
    first by the time in their name, past the first C{retention} (none when
    C{retention} < 1).
    """
    if retention < 1:
        return []
    ours = [path for path in files if path.name.startswith(prefix)]
    ours.sort(key=snapshot_time, reverse=True)
    return ours[retention:]


def etcdctl(layout: EtcdLayout, client_url: str, *args: str) -> list[str]:
    """``etcdctl`` against the member at C{client_url} with the client certificate."""
    certificates = layout.certificates
    cert, key = certificates.client
    return [
        "etcdctl",
        "--endpoints",
        client_url,
        "--cacert",
        certificates.server_ca,
        "--cert",
        cert,
        "--key",
        key,
        *args,
    ]


def _compress(path: Path) -> Path:
    zipped = path.with_name(path.name + ".zip")
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, path.name)
    path.unlink()
    return zipped


class EtcdSnapshots(Service):
    """The scheduled snapshots of a server's member, and their retention."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        layout: EtcdLayout,
        settings: EtcdSettings,
        client_url: str,
        node_name: str,
    ) -> None:
        self.reactor = reactor
        self.layout = layout
        self.settings = settings
        self.client_url = client_url
        self.node_name = node_name
        self.schedule = Schedule.parse(settings.snapshot_cron)
        self.directory = settings.snapshot_dir or layout.snapshots
        self._timer: IDelayedCall | None = None
        self._saving = False
        #: The cluster's records of the snapshots, once the server has an object store.
        self.records: SnapshotRecords | None = None

    def startService(self) -> None:
        super().startService()
        if self.settings.snapshot_dir is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.settings.disable_snapshots:
            self._arm()

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        now = datetime.datetime.fromtimestamp(self.reactor.seconds()).astimezone()
        due = self.schedule.next_after(now)
        if due is None:
            return
        self._timer = self.reactor.callLater(max(0.0, due.timestamp() - now.timestamp()), self._due)

    def _due(self) -> None:
        self._timer = None
        settings = self.settings
        saving = self.save(settings.snapshot_name, retention=settings.snapshot_retention)
        saving.addErrback(
            lambda f: self._log.warn(
                "Failed to take scheduled snapshot: {error}", error=f.getErrorMessage()
            )
        )
        saving.addBoth(lambda _: self._arm() if self.running else None)

    def save(
        self,
        name: str,
        directory: Path | None = None,
        compress: bool | None = None,
        retention: int = 0,
    ) -> Any:
        """
        Take one snapshot now, then apply C{retention} to C{name}'s (0: none,
        as for ``k3s etcd-snapshot save``); fires with its path.
        """
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._save(name, directory, compress, retention))

    async def _save(
        self, name: str, directory: Path | None, compress: bool | None, retention: int
    ) -> Path:
        if self._saving:
            raise RuntimeError("snapshot save already in progress")
        self._saving = True
        directory = directory or self.directory
        try:
            path = directory / snapshot_name(name, self.node_name, self.reactor.seconds())
            self._log.info("Saving etcd snapshot to {path}", path=str(path))
            argv = etcdctl(self.layout, self.client_url, "snapshot", "save", str(path))
            try:
                await run_command(self.reactor, argv, timeout=SNAPSHOT_TIMEOUT)
            except CommandFailed as e:
                if "learner" in str(e):
                    raise RuntimeError("Unable to take snapshot: not supported for learner") from e
                raise
            if self.settings.snapshot_compress if compress is None else compress:
                self._log.info("Compressing etcd snapshot file: {path}", path=str(path))
                path = await deferToThread(_compress, path)
            await self._keep_metadata(path.name)
            self.prune(name, retention, directory)
        finally:
            self._saving = False
        await self.record(directory)
        return path

    @property
    def metadata_dir(self) -> Path:
        """``db/.metadata``: each snapshot's extra metadata, by snapshot name."""
        return self.layout.db / ".metadata"

    async def _keep_metadata(self, snapshot: str) -> None:
        """Keep ``k3s-etcd-snapshot-extra-metadata``'s data with the snapshot, if it exists."""
        if self.records is None:
            return
        try:
            metadata = await self.records.extra_metadata()
        except Exception as e:
            self._log.warn("Failed to read extra snapshot metadata: {error}", error=str(e))
            return
        if metadata is not None:
            self.metadata_dir.mkdir(mode=0o700, exist_ok=True)
            data = json.dumps(metadata, separators=(",", ":")).encode()
            write_atomically(self.metadata_dir / snapshot, data, 0o600)

    def _remove(self, path: Path) -> None:
        self._log.info("Removing local snapshot {path}", path=str(path))
        path.unlink(missing_ok=True)
        (self.metadata_dir / path.name).unlink(missing_ok=True)

    def prune(self, name: str, retention: int, directory: Path | None = None) -> list[Path]:
        """Remove C{name}'s snapshots beyond the newest C{retention}; the removed files."""
        directory = directory or self.directory
        prefix = f"{name}-"
        self._log.info(
            "Applying snapshot retention={retention} to local snapshots with prefix {prefix} "
            "in {directory}",
            retention=retention,
            prefix=prefix,
            directory=str(directory),
        )
        removed = beyond_retention(list(directory.iterdir()), prefix, retention)
        for path in removed:
            self._remove(path)
        return removed

    async def record(self, directory: Path | None = None) -> None:
        """Make the cluster's records follow the directory (a failure is only logged)."""
        if self.records is None:
            return
        try:
            await self.records.reconcile(directory or self.directory)
        except Exception as e:
            self._log.warn("Failed to record etcd snapshots: {error}", error=str(e))

    async def operate(self, request: dict[str, Any]) -> dict[str, Any]:
        """
        One ``POST /db/snapshot`` of ``k3s etcd-snapshot``: ``operation``
        ``save``, ``list``, ``delete`` or ``prune``, with the ``name``,
        ``dir``, ``compress`` and ``retention`` the command was given.

        :raises ValueError: a request k3s's server would refuse, in its words.
        """
        operation = request.get("operation")
        names = [str(n) for n in request.get("name") or ()]
        given_dir = request.get("dir")
        directory = Path(given_dir) if given_dir else self.directory
        if operation == "save":
            path = await self.save(
                names[0] if names else "on-demand", directory, request.get("compress")
            )
            return {"created": [path.name]}
        if operation == "list":
            from k3stw.etcd.snapshotrecords import snapshot_files, snapshot_record

            files = snapshot_files(directory)
            items = [snapshot_record(p, self.node_name, self.metadata_dir) for p in files]
            kind = "ETCDSnapshotFileList"
            return {"apiVersion": "k3s.cattle.io/v1", "kind": kind, "items": items}
        if operation == "delete":
            if not names:
                raise ValueError("no snapshots given for removal")
            deleted = []
            for name in names:
                path = directory / name
                if path.is_file() and path.parent == directory:
                    self._remove(path)
                    deleted.append(name)
            await self.record(directory)
            return {"deleted": deleted}
        if operation == "prune":
            retention = request.get("retention")
            retention = self.settings.snapshot_retention if retention is None else int(retention)
            removed = self.prune(names[0] if names else "on-demand", retention, directory)
            await self.record(directory)
            return {"deleted": [p.name for p in removed]}
        raise ValueError(f"unsupported snapshot operation {operation!r}")


def prepare_reset(layout: EtcdLayout, settings: EtcdSettings, member: MemberConfig) -> None:
    """
    Before a ``--cluster-reset`` start: refuse a second reset (k3s's gate),
    or, with a restore path, move the data aside and restore the snapshot
    as C{member} alone.  Blocking.

    :raises StartupError: with k3s's messages.
    """
    restore = settings.restore_path
    if restore is None:
        if layout.reset_flag.exists():
            raise StartupError(
                "Managed etcd cluster membership was previously reset, please remove the "
                "cluster-reset flag and start k3s normally. If you need to perform another "
                "cluster reset, you must first manually delete the file at "
                f"{layout.reset_flag}"
            )
        return
    if not restore.exists():
        raise StartupError(f"etcd: snapshot path does not exist: {restore}")
    if restore.is_dir():
        raise StartupError(f"etcd: snapshot path must be a file, not a directory: {restore}")
    with tempfile.TemporaryDirectory(dir=layout.db) as scratch:
        snapshot = restore
        if restore.name.endswith(".zip"):
            with zipfile.ZipFile(restore) as archive:
                first = archive.namelist()[0]
                snapshot = Path(archive.extract(first, scratch))
        keep = {name: (layout.data_dir / name).read_bytes() for name in ("name",)}
        if layout.data_dir.exists():
            old = layout.db / f"etcd-old-{int(time.time())}"
            layout.data_dir.rename(old)
            _log.info("Pre-restore etcd database moved to {path}", path=str(old))
        command = [
            "etcdctl", "snapshot", "restore", str(snapshot),
            "--data-dir", str(layout.data_dir),
            "--name", member.name,
            "--initial-cluster", f"{member.name}={member.peer_url}",
            "--initial-advertise-peer-urls", member.peer_url,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, check=False
        )
        if done.returncode != 0:
            shutil.rmtree(layout.data_dir, ignore_errors=True)
            raise StartupError(
                f"etcd: failed to restore snapshot {restore}: "
                f"{done.stderr.decode(errors='replace').strip()[-400:]}"
            )
        for name, content in keep.items():
            (layout.data_dir / name).write_bytes(content)
        layout.data_dir.chmod(0o700)
