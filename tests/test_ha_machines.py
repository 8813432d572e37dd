"""
HA clusters under faults, each server a test machine of its own
(tests/support/ha_machines.py): three servers on embedded etcd, or two on
PostgreSQL, or two on MariaDB (the database on the hub, always up), with
an agent; one test body for all three.

- The fixed registration address: joining servers and the agent are given
  ``--server https://10.199.1.1:6443``, haproxy in TCP mode in front of the
  servers; once joined, the agent's load balancer knows every server, and
  haproxy's end changes nothing: the agent stays Ready, its load balancer
  and its tunnels work, and the agent restarted afterwards reaches the
  servers from its saved server list.
- Faults, while a writer in the hub writes through every server and records
  each acknowledged write: one server SIGKILLed (the etcd leader's), then
  another partitioned (all but loopback dropped in its namespace).  Writes
  go on through the others and the agent stays reachable (the seconds it
  took are printed, not asserted); the failed server catches up when it
  returns; no acknowledged write is lost.
- A further server joins (through a server, the fixed address being gone)
  and the agent's load balancer learns it.

Member removal (``kubectl delete node``) and the refused joins are in
tests/test_embedded_etcd.py.  Slow: 2-4 minutes apiece.  Needs root,
haproxy, etcd, PostgreSQL and MariaDB (run-tests.sh installs them).
"""

from __future__ import annotations

import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.ha_machines import FIXED, PORT, HACluster, Node, Writer, until
from tests.support.mariadb import MariaDBServer
from tests.support.postgres import PostgresServer, fresh_database_name


class FaultsMixin:
    """The one test body; a subclass says which datastore its servers share."""

    servers = 2

    def datastore(self, hub: str) -> str:
        """The servers' datastore: ``etcd``, or an endpoint of a database started on the hub."""
        raise NotImplementedError

    def test_fixed_address_faults_and_a_later_server(self) -> None:
        case = self.case()
        work = Path(case.mktemp()).absolute()
        cluster = HACluster(case, work, self.servers, 1, "")
        cluster.datastore = self.datastore(cluster.hub.name)
        etcd = cluster.datastore == "etcd"
        cluster.start_haproxy()

        first = cluster.server(1, "--cluster-init" if etcd else "")
        cluster.ready(first)
        join = f"--server https://{FIXED}:{PORT}" if etcd else ""
        servers = [first] + [cluster.server(i, join) for i in range(2, self.servers + 1)]
        for server in servers[1:]:
            cluster.ready(server)
        agent = cluster.agent(1)
        addresses = {f"{s.address}:{PORT}" for s in servers}
        until("the agent Ready", lambda: cluster.node_ready(agent.name, first))
        until(
            "every server in the agent's balancer",
            lambda: cluster.balancer_addresses(agent) == addresses,
        )
        until("the agent healthy", lambda: cluster.agent_healthy(agent, servers))

        # The fixed address goes away: nothing changes for the agent, even restarted.
        cluster.stop_haproxy()
        case.assertEqual(cluster.get(cluster.hub, FIXED, "/v1-k3s/readyz"), 0)
        case.assertTrue(cluster.agent_healthy(agent, servers))
        cluster.stop(agent)
        cluster.launch(agent)
        until("the restarted agent healthy", lambda: cluster.agent_healthy(agent, servers))
        case.assertTrue(cluster.node_ready(agent.name, servers[-1]))

        writer = Writer(cluster, servers)
        until("writes through every server", lambda: len(writer.acknowledged()) > 10)
        killed = cluster.etcd_leader() if etcd else servers[0]
        self.fault(cluster, writer, servers, agent, killed, "SIGKILL")
        partitioned = next(s for s in servers if s is not killed)
        self.fault(cluster, writer, servers, agent, partitioned, "partition")
        writer.stop()
        for server in servers:
            case.assertEqual(writer.lost(server), [], server.name)
        case.assertGreater(len(writer.acknowledged()), 20)
        for server in servers:
            case.assertTrue(cluster.node_ready(agent.name, server), server.name)

        # Another server joins, through a server now the fixed address is gone.
        extra = self.servers + 1
        later = cluster.server(extra, f"--server https://{first.address}:{PORT}" if etcd else "")
        cluster.ready(later)
        addresses.add(f"{later.address}:{PORT}")
        until(
            "the agent's balancer learns it", lambda: cluster.balancer_addresses(agent) == addresses
        )
        listed = cluster.kubectl("get", "configmaps", "-o", "name", server=later)
        case.assertIn(f"configmap/{writer.acknowledged()[-1][0]}", listed.split())

    def fault(
        self,
        cluster: HACluster,
        writer: Writer,
        servers: list[Node],
        agent: Node,
        victim: Node,
        kind: str,
    ) -> None:
        """C{kind} befalls C{victim}: the others carry on; it returns and catches up."""
        others = [s for s in servers if s is not victim]
        began = time.monotonic()
        cluster.fail(victim, kind)
        wanted = {s.address for s in others}
        until(
            f"writes through the others after the {kind} of {victim.name}",
            lambda: wanted <= set(writer.first_after(began)),
        )
        writes = max(writer.first_after(began)[a] for a in wanted)
        until("the agent healthy", lambda: cluster.agent_healthy(agent, others))
        print(
            f"{cluster.datastore.split(':')[0]}: {kind} of {victim.name}: a write through every "
            f"other server after {writes:.2f} s, the agent healthy (checked after that) "
            f"{time.monotonic() - began:.2f} s after"
        )
        cluster.bring_back(victim, kind, writer)

    def case(self) -> SynchronousTestCase:
        assert isinstance(self, SynchronousTestCase)
        return self


class EmbeddedEtcdFaults(FaultsMixin, SynchronousTestCase):
    servers = 3

    def datastore(self, hub: str) -> str:
        return "etcd"


class PostgresFaults(FaultsMixin, SynchronousTestCase):
    def datastore(self, hub: str) -> str:
        database = PostgresServer(FIXED, 5432, netns=hub).start()
        self.addCleanup(database.destroy)
        return database.endpoint(fresh_database_name("ha"))


class MariaDBFaults(FaultsMixin, SynchronousTestCase):
    def datastore(self, hub: str) -> str:
        database = MariaDBServer(FIXED, 3306, netns=hub).start()
        self.addCleanup(database.destroy)
        return database.endpoint(fresh_database_name("ha"))
