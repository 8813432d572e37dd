"""
L{EmbeddedEtcd}: the server's datastore on the etcd member it runs itself.

The member is Debian's ``etcd`` as a L{SupervisedProcess} started with the
config L{k3stw.etcd.config} wrote; the datastore is the etcd backend on the
member's own client URL, with the ``tls/etcd/client`` certificate.  Until the
member answers (or, while it is a learner, until it is promoted) the
datastore keeps trying, so the server becomes ready only once its member
votes, as k3s's does.

The child is started under ``setpriv --pdeathsig KILL``: k3s's etcd lives in
k3s's process and dies with it; so does this one, even on SIGKILL.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from k3stw.datastore.etcd import EtcdDatastore, EtcdError, EtcdTLS
from k3stw.datastore.etcd.gateway import as_int
from k3stw.datastore.interface import DatastoreUnavailable, KeyExists
from k3stw.etcd.config import EtcdLayout
from k3stw.files import write_atomically
from k3stw.logs import Logger
from k3stw.machinery.processes import SupervisedProcess
from k3stw.machinery.timing import Backoff, PeriodicJob
from k3stw.server import bootstrapdata

if TYPE_CHECKING:
    from k3stw.etcd.snapshots import EtcdSnapshots

RESET_DONE = (
    "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. "
    "Backup and delete ${{datadir}}/server/db on each peer etcd server and rejoin the nodes"
)
#: What etcd says (and then exits) once its member was removed from the cluster.
REMOVED_FROM_CLUSTER = "the member has been permanently removed from the cluster"
#: How often the leader promotes learners (k3s: 15 s; shorter, so joins finish sooner).
LEARNER_INTERVAL = 5.0
#: Seconds a member has between SIGTERM and SIGKILL (it hands over leadership first).
STOP_TIMEOUT = 3.0


def etcd_command(layout: EtcdLayout, etcd: str = "etcd") -> list[str]:
    """The member's command line: etcd on its config, killed with its parent."""
    return ["setpriv", "--pdeathsig", "KILL", "--", etcd, "--config-file", str(layout.config_file)]


class EmbeddedEtcd(EtcdDatastore):
    """
    The datastore on a member this server runs: the member starts first and
    stops last, and the leader among the servers promotes learners.

    :param client_url: the member's own client URL.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        layout: EtcdLayout,
        client_url: str,
        *,
        reset: bool = False,
        token_password: str | None = None,
        **kwargs: Any,
    ) -> None:
        certificates = layout.certificates
        cert, key = certificates.client
        super().__init__(
            reactor, [client_url], EtcdTLS(certificates.server_ca, cert, key), **kwargs
        )
        self.layout = layout
        self.reactor = reactor
        #: Started with ``--cluster-reset``: exit once the member is alone.
        self.reset = reset
        #: Seals the cluster's bootstrap data kept in etcd (None: not kept).
        self.token_password = token_password
        self.member = SupervisedProcess(
            reactor,
            "etcd",
            etcd_command(layout),
            backoff=Backoff(1.0, 10.0),
            stop_timeout=STOP_TIMEOUT,
            on_line=self._member_said,
        )
        #: The snapshots (scheduled and asked for), run while the datastore runs (None: none).
        self.snapshots: EtcdSnapshots | None = None
        self.learners = PeriodicJob(
            reactor,
            LEARNER_INTERVAL,
            self.promote_learners,
            "promote etcd learners",
            first=LEARNER_INTERVAL,
            expected=(DatastoreUnavailable, EtcdError),
        )

    def __repr__(self) -> str:
        return f"<EmbeddedEtcd {self.gateway.description}>"

    def startService(self) -> None:
        self.layout.data_dir.chmod(0o700)
        self.member.startService()
        super().startService()
        if self.reset:
            self.when_ready().addCallback(lambda _: Deferred.fromCoroutine(self._finish_reset()))
        else:
            checking = self.when_ready().addCallback(
                lambda _: Deferred.fromCoroutine(self._check_member())
            )
            checking.addErrback(
                lambda f: self._log.warn(
                    "Failed to test data store connection: {error}", error=f.getErrorMessage()
                )
            )
            self.learners.startService()
            if self.snapshots is not None:
                self.snapshots.startService()

    def _member_said(self, line: str) -> None:
        if REMOVED_FROM_CLUSTER not in line or self.layout.tombstone.exists():
            return
        # k3s's tombstone: the next start moves the data aside and joins again.
        write_atomically(self.layout.tombstone, b"", 0o600)
        self._log.error(
            "This node has been removed from the cluster - please restart k3s to rejoin the cluster"
        )
        self.member.stopService()

    async def _check_member(self) -> None:
        """k3s's datastore test at start: defragment the member, disarm its alarms."""
        self._log.info("Defragmenting etcd database")
        await self.gateway.call("/v3/maintenance/defragment", {}, idempotent=True)
        alarms = await self.gateway.call(
            "/v3/maintenance/alarm", {"action": "GET"}, idempotent=True
        )
        for alarm in alarms.get("alarms") or []:
            self._log.info(
                "Alarm on etcd member {id}: {alarm}",
                id=alarm.get("memberID", ""),
                alarm=alarm.get("alarm", "NONE"),
            )
            await self.gateway.call(
                "/v3/maintenance/alarm", {"action": "DEACTIVATE", **alarm}, idempotent=True
            )
        if alarms.get("alarms"):
            self._log.info("Alarms disarmed on etcd server")
        self._log.info("etcd data store connection OK")
        await self._save_bootstrap_data()

    async def _save_bootstrap_data(self) -> None:
        """
        Keep the cluster's bootstrap data in etcd, sealed with the token, as
        k3s does (the first server to get there saves it; snapshots carry it).
        """
        password = self.token_password
        if password is None:
            return
        listed = await self.list(bootstrapdata.PREFIX)
        if listed.items:
            return
        document = bootstrapdata.document(self.layout.server_dir)
        sealed = bootstrapdata.encrypt(password, json.dumps(document).encode())
        try:
            await self.create(bootstrapdata.storage_key(password), sealed)
        except KeyExists:
            return
        self._log.info("Saved the cluster's bootstrap data to {datastore}", datastore="etcd")

    async def bootstrap_data(self, password: str) -> dict[str, Any] | None:
        """The bootstrap data kept in etcd, opened with C{password} (None: none for it)."""
        stored = await self.get(bootstrapdata.storage_key(password))
        if stored is None:
            return None
        try:
            document: dict[str, Any] = json.loads(bootstrapdata.decrypt(password, stored.value))
        except ValueError:
            return None
        return document

    async def _finish_reset(self) -> None:
        """k3s's end of a cluster reset: once this member is alone, say so and exit."""
        while len(await self.members()) != 1:
            await deferLater(self.reactor, 1.0)
        write_atomically(self.layout.reset_flag, b"", 0o600)
        self._log.info(RESET_DONE)
        self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        for job in (self.learners, self.snapshots):
            if job is not None and job.running:
                job.stopService()
        stopping = super().stopService()
        stopping.addBoth(lambda _: self.member.stopService())
        return stopping

    async def members(self) -> list[dict[str, Any]]:
        """etcd's member list, as its JSON gateway spells the members."""
        answer = await self.gateway.call("/v3/cluster/member/list", {}, idempotent=True)
        return list(answer.get("members") or [])

    async def is_leader(self) -> bool:
        status = await self.gateway.call("/v3/maintenance/status", {}, idempotent=True)
        return as_int(status.get("leader")) == as_int(status.get("header", {}).get("member_id"))

    async def promote_learners(self) -> None:
        """On the leader only: promote each learner that has caught up (k3s's manageLearners)."""
        if not await self.is_leader():
            return
        for member in await self.members():
            if not member.get("isLearner"):
                continue
            try:
                await self.gateway.call(
                    "/v3/cluster/member/promote", {"ID": member["ID"]}, idempotent=False
                )
            except EtcdError as e:
                self._log.debug(
                    "Learner {name} not promoted yet: {error}",
                    name=member.get("name", ""),
                    error=e.message,
                )
                continue
            self._log.info("Promoted learner {name}", name=member.get("name", ""))

    async def remove_member(self, name: str, address: str) -> bool:
        """
        Remove the member called C{name} whose peer URL is on C{address}.

        :return: whether one was there to remove ("member not found" is success).
        """
        for member in await self.members():
            hosts = {urlsplit(peer).hostname for peer in member.get("peerURLs") or []}
            if member.get("name") != name or address not in hosts:
                continue
            self._log.info(
                "Removing name={name} id={id} address={address} from etcd",
                name=name,
                id=member["ID"],
                address=address,
            )
            await self.gateway.call(
                "/v3/cluster/member/remove", {"ID": member["ID"]}, idempotent=True
            )
            return True
        return False
