"""
The pure parts of embedded etcd: member names, the config k3s writes, the
``--etcd-arg`` typing, the certificate set, snapshot names and retention,
the snapshot schedule and the critical-config comparison.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds.cronjobs import Schedule
from k3stw.etcd.config import (
    EtcdLayout,
    MemberConfig,
    config_document,
    member_name,
    node_of_member,
    parse_etcd_args,
    render,
)
from k3stw.etcd.join import ATTEMPTS, MISMATCH, Supervisor, critical_mismatches
from k3stw.etcd.snapshots import beyond_retention, snapshot_name
from k3stw.lifecycle import StartupError
from k3stw.pki.certs import (
    SubjectAltNames,
    Usage,
    is_signed_by,
    load_pem_certificates,
    new_ca,
    new_leaf,
)
from k3stw.pki.store import load_or_create_etcd_certificates, load_or_create_server_credentials
from k3stw.pki.token import Token, ca_hash
from k3stw.server import bootstrapdata
from k3stw.server.config import ServerConfig

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)


class MemberNameTests(SynchronousTestCase):
    def test_node_name_and_eight_characters_of_a_uuid(self) -> None:
        self.assertEqual(
            member_name("server1", "3f2a9c1b-0000-4000-8000-000000000000"), "server1-3f2a9c1b"
        )
        name = member_name("my-server")
        self.assertRegex(name, r"^my-server-[0-9a-f]{8}$")
        self.assertEqual(node_of_member(name), "my-server")

    def test_no_node_name_is_k3s_error(self) -> None:
        with self.assertRaises(ValueError) as caught:
            member_name("")
        self.assertEqual(str(caught.exception), "server node name not set")


class ConfigTests(SynchronousTestCase):
    layout = EtcdLayout(Path("/var/lib/rancher/k3s/server"))

    def test_new_cluster_config_has_k3s_keys(self) -> None:
        member = MemberConfig(
            "s1-abcdef12", "10.0.0.5", (("s1-abcdef12", "https://10.0.0.5:2380"),), "new"
        )
        document = yaml.safe_load(render(config_document(self.layout, member)))
        self.assertEqual(document["name"], "s1-abcdef12")
        self.assertEqual(document["data-dir"], "/var/lib/rancher/k3s/server/db/etcd")
        self.assertEqual(
            document["listen-client-urls"], "https://127.0.0.1:2379,https://10.0.0.5:2379"
        )
        self.assertEqual(
            document["listen-peer-urls"], "https://127.0.0.1:2380,https://10.0.0.5:2380"
        )
        self.assertEqual(document["advertise-client-urls"], "https://10.0.0.5:2379")
        self.assertEqual(document["listen-metrics-urls"], "http://127.0.0.1:2381")
        self.assertEqual(document["initial-cluster"], "s1-abcdef12=https://10.0.0.5:2380")
        self.assertEqual(document["initial-cluster-state"], "new")
        self.assertEqual(document["initial-advertise-peer-urls"], "https://10.0.0.5:2380")
        self.assertEqual(
            (document["heartbeat-interval"], document["election-timeout"]), (500, 5000)
        )
        self.assertEqual(document["snapshot-count"], 10000)
        self.assertEqual(document["experimental-watch-progress-notify-interval"], 5_000_000_000)
        tls = document["client-transport-security"]
        self.assertEqual(tls["cert-file"], "/var/lib/rancher/k3s/server/tls/etcd/server-client.crt")
        self.assertEqual(
            tls["trusted-ca-file"], "/var/lib/rancher/k3s/server/tls/etcd/server-ca.crt"
        )
        self.assertTrue(tls["client-cert-auth"])
        peer = document["peer-transport-security"]
        self.assertEqual(
            peer["cert-file"], "/var/lib/rancher/k3s/server/tls/etcd/peer-server-client.crt"
        )
        self.assertNotIn("force-new-cluster", document)
        # Keys sorted, as k3s marshals them.
        text = render(config_document(self.layout, member))
        keys = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
        self.assertEqual(keys, sorted(keys))

    def test_restart_has_no_initial_cluster(self) -> None:
        document = config_document(self.layout, MemberConfig("s1-abcdef12", "10.0.0.5"))
        self.assertNotIn("initial-cluster", document)
        self.assertNotIn("initial-cluster-state", document)

    def test_reset_listens_on_loopback_only_and_forces_a_new_cluster(self) -> None:
        member = MemberConfig(
            "s1-x",
            "10.0.0.5",
            (("s1-x", "https://10.0.0.5:2380"),),
            "new",
            reset=True,
            expose_metrics=True,
        )
        document = config_document(self.layout, member)
        self.assertEqual(document["listen-client-urls"], "https://127.0.0.1:2379")
        self.assertEqual(document["advertise-client-urls"], "https://127.0.0.1:2379")
        self.assertEqual(document["listen-metrics-urls"], "http://127.0.0.1:2381")
        self.assertIs(document["force-new-cluster"], True)

    def test_exposed_metrics_and_a_loopback_node_address(self) -> None:
        exposed = config_document(self.layout, MemberConfig("a", "10.0.0.5", expose_metrics=True))
        self.assertEqual(
            exposed["listen-metrics-urls"], "http://127.0.0.1:2381,http://10.0.0.5:2381"
        )
        # Several servers on one host: each member only on its own loopback address.
        loopback = config_document(self.layout, MemberConfig("a", "127.0.0.52"))
        self.assertEqual(loopback["listen-client-urls"], "https://127.0.0.52:2379")
        self.assertEqual(loopback["listen-metrics-urls"], "http://127.0.0.52:2381")

    def test_etcd_args_typed_as_k3s_types_them_and_merged(self) -> None:
        extra = parse_etcd_args([
            "quota-backend-bytes=8589934592", "--election-timeout=1000",
            "experimental-compaction-batch-limit-interval=10ms", "auto-compaction-retention=1h",
            "log-outputs=[stderr,default]", "enable-pprof=true", "auto-compaction-mode=periodic",
            "name-with-time=notaduration",
        ])  # fmt: skip
        self.assertEqual(extra["quota-backend-bytes"], 8589934592)
        self.assertEqual(extra["election-timeout"], 1000)
        self.assertEqual(extra["experimental-compaction-batch-limit-interval"], 10_000_000)
        self.assertEqual(extra["auto-compaction-retention"], 3600 * 10**9)
        self.assertEqual(extra["log-outputs"], ["stderr", "default"])
        self.assertIs(extra["enable-pprof"], True)
        self.assertEqual(extra["auto-compaction-mode"], "periodic")
        self.assertEqual(extra["name-with-time"], "notaduration")
        document = config_document(self.layout, MemberConfig("a", "10.0.0.5", extra=extra))
        self.assertEqual(document["election-timeout"], 1000)
        with self.assertRaises(ValueError):
            parse_etcd_args(["quota-backend-bytes"])


class CertificateTests(SynchronousTestCase):
    def test_k3s_certificate_set(self) -> None:
        server_dir = Path(self.mktemp())
        load_or_create_server_credentials(server_dir, SubjectAltNames.of(["127.0.0.1"]), NOW)
        names = SubjectAltNames.of(["127.0.0.1", "10.0.0.5", "s1"])
        load_or_create_etcd_certificates(server_dir, names, NOW)
        tls = server_dir / "tls" / "etcd"
        self.assertEqual(
            sorted(p.name for p in tls.iterdir()),
            sorted(
                f"{stem}.{ext}"
                for stem in (
                    "server-ca",
                    "peer-ca",
                    "server-client",
                    "peer-server-client",
                    "client",
                )
                for ext in ("crt", "key")
            ),
        )

        def certificate(name: str) -> x509.Certificate:
            return load_pem_certificates((tls / name).read_bytes())[0]

        server_ca, peer_ca = certificate("server-ca.crt"), certificate("peer-ca.crt")
        self.assertTrue(server_ca.subject.rfc4514_string().startswith("CN=etcd-server-ca@"))
        self.assertTrue(peer_ca.subject.rfc4514_string().startswith("CN=etcd-peer-ca@"))
        both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        for name, ca, cn, usages in (
            ("server-client.crt", server_ca, "etcd-server", both),
            ("peer-server-client.crt", peer_ca, "etcd-peer", both),
            ("client.crt", server_ca, "etcd-client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ):
            leaf = certificate(name)
            self.assertTrue(is_signed_by(leaf, ca), name)
            self.assertEqual(leaf.subject.rfc4514_string(), f"CN={cn}")
            used = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            self.assertEqual(set(used), usages, name)
        sans = SubjectAltNames.of_certificate(certificate("server-client.crt"))
        self.assertEqual(sans, SubjectAltNames.of(["127.0.0.1", "10.0.0.5", "s1", "localhost"]))
        self.assertEqual(os.stat(tls / "client.key").st_mode & 0o777, 0o600)
        # A second start keeps them byte for byte.
        before = (tls / "peer-server-client.crt").read_bytes()
        load_or_create_etcd_certificates(server_dir, names, NOW)
        self.assertEqual((tls / "peer-server-client.crt").read_bytes(), before)

    def test_bootstrap_data_carries_the_etcd_cas(self) -> None:
        source, target = Path(self.mktemp()), Path(self.mktemp())
        load_or_create_server_credentials(source, SubjectAltNames.of(["127.0.0.1"]), NOW)
        document = bootstrapdata.document(source)
        self.assertLessEqual(
            {"ETCDServerCA", "ETCDServerCAKey", "ETCDPeerCA", "ETCDPeerCAKey"}, set(document)
        )
        bootstrapdata.reconcile(target, document, "test")
        for name in ("tls/etcd/server-ca.key", "tls/etcd/peer-ca.crt", "tls/server-ca.crt"):
            self.assertEqual((target / name).read_bytes(), (source / name).read_bytes(), name)


class SnapshotTests(SynchronousTestCase):
    def test_name_and_retention(self) -> None:
        self.assertEqual(
            snapshot_name("etcd-snapshot", "s1", 1765000000.7), "etcd-snapshot-s1-1765000000"
        )
        files = [Path(f"/s/etcd-snapshot-s1-{t}") for t in (5, 1, 3, 2, 4)]
        files += [Path("/s/etcd-snapshot-s1-6.zip"), Path("/s/on-demand-s1-0")]
        pruned = beyond_retention(files, "etcd-snapshot-", 3)
        self.assertEqual(
            [p.name for p in pruned],
            ["etcd-snapshot-s1-3", "etcd-snapshot-s1-2", "etcd-snapshot-s1-1"],
        )
        self.assertEqual(beyond_retention(files, "etcd-snapshot-", 0), [])

    def test_default_schedule_is_midnight_and_noon(self) -> None:
        schedule = Schedule.parse("0 */12 * * *")
        after = schedule.next_after(datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC))
        self.assertEqual(after, datetime.datetime(2026, 12, 7, 0, 0, tzinfo=datetime.UTC))


class CriticalConfigTests(SynchronousTestCase):
    def settings(self, **changes: object) -> dict[str, object]:
        config = ServerConfig(
            data_dir=Path("/d"), hostname="s", bind_address="0.0.0.0", https_port=6443,
            node_ips=("10.0.0.5",), advertise_address=None, tls_sans=(), token=None,
            agent_token=None, kubeconfig=Path("/k"), kubeconfig_mode=0o600,
            service_cidr="10.43.0.0/16", cluster_domain="cluster.local",
        )  # fmt: skip
        settings = config.agent_settings()
        settings.update(changes)
        return settings

    def test_same_flags_in_other_spellings_match(self) -> None:
        mine = self.settings()
        self.assertEqual(
            critical_mismatches(mine, self.settings(ClusterIPRange="10.42.0.1/16")), []
        )
        # An older server that sends no egress mode is taken to agree.
        self.assertEqual(critical_mismatches(mine, self.settings(EgressSelectorMode="")), [])
        # Other --disable items may differ per server.
        self.assertEqual(critical_mismatches(mine, self.settings(Disables=["local-storage"])), [])

    def test_differences_named_by_flag(self) -> None:
        remote = self.settings(
            ClusterIPRange="10.52.0.0/16", ServiceIPRange="10.53.0.0/16", Disables=["servicelb"]
        )
        self.assertEqual(
            critical_mismatches(self.settings(), remote),
            ["cluster-cidr", "service-cidr", "disable-service-lb"],
        )
        self.assertIn("critical configuration value mismatch between servers", MISMATCH)


class _DropFirst:
    """
    A TLS server on loopback, in a thread, that drops the first C{drops}
    connections as soon as they arrive (a peer still starting, behind a load
    balancer), then answers one ``/cacerts`` with its CA, if C{answers}.
    """

    def __init__(self, case: SynchronousTestCase, drops: int, answers: bool) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca = new_ca("k3s-server-ca", now)
        serving = new_leaf(
            ca, "k3s", Usage.SERVER, now, alt_names=SubjectAltNames.of(["127.0.0.1"])
        )
        home = Path(case.mktemp())
        home.mkdir()
        (home / "cert.pem").write_bytes(serving.certificate_pem)
        (home / "key.pem").write_bytes(serving.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(home / "cert.pem", home / "key.pem")
        self.bundle = ca.certificate_pem
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        thread = threading.Thread(target=self._serve, args=(drops, answers), daemon=True)
        thread.start()
        case.addCleanup(self.listener.close)
        case.addCleanup(thread.join, 10)

    def _serve(self, drops: int, answers: bool) -> None:
        for _ in range(drops):
            self.listener.accept()[0].close()
            self.accepted += 1
        if answers:
            connection, _ = self.listener.accept()
            self.accepted += 1
            with self.context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.bundle)}\r\n"
                tls.sendall(head.encode() + b"Connection: close\r\n\r\n" + self.bundle)


class JoinSupervisorTests(SynchronousTestCase):
    def test_a_dropped_connection_is_tried_again(self) -> None:
        server = _DropFirst(self, ATTEMPTS - 1, answers=True)
        token = Token(ca_hash(server.bundle), "server", "secret")
        supervisor = Supervisor(server.url, token, retry_delay=0)
        supervisor.validate()
        self.assertEqual(supervisor.ca_bundle, server.bundle)
        self.assertEqual(server.accepted, ATTEMPTS)

    def test_a_server_that_keeps_dropping_fails_in_k3s_words(self) -> None:
        server = _DropFirst(self, ATTEMPTS, answers=False)
        supervisor = Supervisor(server.url, Token("", "server", "secret"), retry_delay=0)
        error = self.assertRaises(StartupError, supervisor.validate)
        self.assertIn(f"failed to validate token: {server.url}/cacerts:", str(error))
        self.assertEqual(server.accepted, ATTEMPTS)
