"""Certificates, tokens, the server's files on disk, and kubeconfigs."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import stat
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase

from k3stw.lifecycle import StartupError
from k3stw.pki.certs import KeyPair, SubjectAltNames, Usage, issue, new_ca, new_key, new_leaf
from k3stw.pki.kubeconfig import render_kubeconfig, write_kubeconfig
from k3stw.pki.store import ServerCredentials, ServerLayout, load_or_create_server_credentials
from k3stw.pki.tls import (
    PinnedCAPolicy,
    UnverifiedPolicy,
    client_certificate_requesting_options,
    server_tls_options,
)
from k3stw.pki.token import InvalidToken, Token, ca_hash, parse_token
from k3stw.server.config import ServerConfig

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
HASH = "a" * 64


def config(**changes: Any) -> ServerConfig:
    values: dict[str, Any] = dict(
        data_dir=Path("/unused"),
        hostname="box",
        bind_address="0.0.0.0",
        https_port=6443,
        node_ips=("192.0.2.10",),
        advertise_address=None,
        tls_sans=(),
        token=None,
        agent_token=None,
        kubeconfig=Path("/unused/kc"),
        kubeconfig_mode=0o600,
        service_cidr="10.43.0.0/16",
        cluster_domain="cluster.local",
    )
    values.update(changes)
    return ServerConfig(**values)


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = new_ca("k3s-server-ca@1", NOW)

    def test_ca_is_a_p256_ca(self) -> None:
        """A CA is self-signed, marked CA, ECDSA P-256, valid ten years."""
        certificate = self.ca.certificate
        self.assertEqual(certificate.subject, certificate.issuer)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.value.ca)
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertGreater(certificate.not_valid_after_utc - NOW, datetime.timedelta(days=3600))

    def test_serving_chain_verifies_for_each_name(self) -> None:
        """cryptography's own verifier accepts the serving certificate for every SAN."""
        names = SubjectAltNames.of(["localhost", "127.0.0.5", "k3s.example"])
        serving = new_leaf(self.ca, "k3s", Usage.SERVER, NOW, ["k3s"], names)
        store = Store([self.ca.certificate])
        for subject in (
            x509.DNSName("localhost"),
            x509.DNSName("k3s.example"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.5")),
        ):
            verifier = PolicyBuilder().store(store).time(NOW).build_server_verifier(subject)
            chain = verifier.verify(serving.certificate, [])
            self.assertEqual(chain[-1], self.ca.certificate)

    def test_serving_chain_rejects_other_names(self) -> None:
        """A name that is not a SAN does not verify."""
        serving = new_leaf(self.ca, "k3s", Usage.SERVER, NOW, (), SubjectAltNames.of(["a"]))
        verifier = (
            PolicyBuilder()
            .store(Store([self.ca.certificate]))
            .time(NOW)
            .build_server_verifier(x509.DNSName("b"))
        )
        self.assertRaises(VerificationError, verifier.verify, serving.certificate, [])

    def test_client_certificate(self) -> None:
        """A client certificate carries CN user and O groups, for client auth only."""
        client = new_leaf(self.ca, "system:admin", Usage.CLIENT, NOW, ["system:masters"])
        subject = client.certificate.subject
        self.assertEqual(
            subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "system:admin"
        )
        self.assertEqual(
            subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value, "system:masters"
        )
        usage = client.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.CLIENT_AUTH])
        # Kubernetes client certificates have no SAN, which the web-PKI verifier demands.
        client.certificate.verify_directly_issued_by(self.ca.certificate)

    def test_issue_for_a_foreign_key(self) -> None:
        """issue() certifies a public key it did not make (a CSR's)."""
        key = new_key()
        certificate = issue(self.ca, key.public_key(), "node", Usage.CLIENT, NOW)
        self.assertEqual(certificate.public_key(), key.public_key())

    def test_leaf_never_outlives_its_ca(self) -> None:
        """Near the CA's end, a leaf ends with the CA."""
        late = NOW + datetime.timedelta(days=3600)
        leaf = new_leaf(self.ca, "x", Usage.CLIENT, late)
        self.assertEqual(
            leaf.certificate.not_valid_after_utc, self.ca.certificate.not_valid_after_utc
        )


class ServingNamesTests(SynchronousTestCase):
    def test_k3s_san_set(self) -> None:
        """Hostname, localhost, loopback, node IPs, advertise and bind addresses,
        every --tls-san, and the kubernetes service names and IP."""
        names = config(
            advertise_address="198.51.100.7",
            bind_address="127.0.0.5",
            tls_sans=("lb.example", "203.0.113.1"),
        ).serving_alt_names()
        self.assertEqual(
            names.dns_names,
            {
                "box", "localhost", "lb.example", "kubernetes", "kubernetes.default",
                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            },
        )  # fmt: skip
        self.assertEqual(
            {str(ip) for ip in names.ip_addresses},
            {"127.0.0.1", "::1", "192.0.2.10", "198.51.100.7", "127.0.0.5", "203.0.113.1",
             "10.43.0.1"},  # the kubernetes service: first address of the service CIDR
        )  # fmt: skip

    def test_local_url(self) -> None:
        """The kubeconfig URL is loopback unless the server binds one address."""
        self.assertEqual(config().local_url, "https://127.0.0.1:6443")
        self.assertEqual(config(bind_address="127.0.0.5").local_url, "https://127.0.0.5:6443")
        self.assertEqual(config(bind_address="::1").local_url, "https://[::1]:6443")


class TokenTests(SynchronousTestCase):
    GOOD = [
        (f"K10{HASH}::server:pw", Token(HASH, "server", "pw")),
        ("K10::node:pw", Token("", "node", "pw")),
        ("K10:::pw", Token("", "", "pw")),
        ("pw", Token("", "", "pw")),
        ("pass:with:colons", Token("", "", "pass:with:colons")),
        ("abcdef.0123456789abcdef", Token("", "", "abcdef.0123456789abcdef")),
        (f"K10{HASH}::abcdef.0123456789abcdef", Token(HASH, "", "abcdef.0123456789abcdef")),
        ("  K10::node:pw\n", Token("", "node", "pw")),
    ]
    BAD = [
        ("", "token must not be empty"),
        ("   ", "token must not be empty"),
        ("K10abc::node:pw", "invalid token CA hash length"),
        (f"K10{HASH}a::node:pw", "invalid token CA hash length"),
        ("K10::nocolon", "invalid token format"),
        ("K10::user:", "invalid token format"),
        ("K10justtext", "invalid token format"),
    ]

    def test_good_tokens(self) -> None:
        """Full, short and bootstrap forms parse as k3s parses them."""
        for text, expected in self.GOOD:
            self.assertEqual(parse_token(text), expected, text)

    def test_bad_tokens(self) -> None:
        """Malformed tokens fail with k3s's words."""
        for text, message in self.BAD:
            error = self.assertRaises(InvalidToken, parse_token, text)
            self.assertEqual(str(error), message, text)

    def test_round_trip(self) -> None:
        """A token prints in the full K10 form and parses back to itself."""
        for _, token in self.GOOD:
            self.assertEqual(parse_token(str(token)), token)
        self.assertEqual(str(Token(HASH, "server", "pw")), f"K10{HASH}::server:pw")

    def test_authorization_header(self) -> None:
        """Basic with the caller's user name, or Bearer for a bootstrap token."""
        basic = Token(HASH, "server", "pw").authorization("node")
        self.assertEqual(basic, b"Basic " + base64.b64encode(b"node:pw"))
        bearer = parse_token("abcdef.0123456789abcdef").authorization("node")
        self.assertEqual(bearer, b"Bearer abcdef.0123456789abcdef")


class CAHashTests(SynchronousTestCase):
    def test_single_certificate_hashes_the_pem_bytes(self) -> None:
        """One certificate: SHA-256 of the PEM exactly as served, trailing bytes included."""
        pem = new_ca("ca", NOW).certificate_pem
        self.assertEqual(ca_hash(pem), hashlib.sha256(pem).hexdigest())
        self.assertNotEqual(ca_hash(pem + b"\n"), ca_hash(pem))

    def test_bundle_hashes_the_root_der(self) -> None:
        """A bundle hashes the DER of the root its first certificate chains to."""
        root = new_ca("root", NOW)
        intermediate_key = new_key()
        intermediate = KeyPair(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
            .issuer_name(root.certificate.subject)
            .public_key(intermediate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root.key, hashes.SHA256()),  # as new_ca signs the root
            intermediate_key,
        )
        bundle = intermediate.certificate_pem + root.certificate_pem
        der = root.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(ca_hash(bundle), hashlib.sha256(der).hexdigest())

    def test_unverifiable_bundle(self) -> None:
        """Two unrelated certificates are not a chain."""
        bundle = new_ca("a", NOW).certificate_pem + new_ca("b", NOW).certificate_pem
        self.assertRaises(ValueError, ca_hash, bundle)

    def test_not_a_certificate(self) -> None:
        """Garbage is no CA."""
        self.assertRaises(ValueError, ca_hash, b"hello")


class ServerCredentialsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server_dir = Path(self.mktemp()) / "server"
        self.layout = ServerLayout(self.server_dir)
        self.names = config().serving_alt_names()

    def load(self, **kw: Any) -> ServerCredentials:
        for flag in ("token", "agent_token"):
            if isinstance(kw.get(flag), str):
                kw[flag] = parse_token(kw[flag])
        kw.setdefault("now", NOW)
        kw.setdefault("alt_names", self.names)
        return load_or_create_server_credentials(self.server_dir, **kw)

    def snapshot(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.server_dir)): p.read_bytes() if not p.is_symlink() else b"->"
            for p in sorted(self.server_dir.rglob("*"))
            if p.is_file() or p.is_symlink()
        }

    def test_first_start_lays_out_k3s_files(self) -> None:
        """CAs, serving and admin pairs, tokens and passwd, with private keys 0600."""
        credentials = self.load()
        files = self.snapshot()
        for stem in ("server-ca", "client-ca", "serving-kube-apiserver", "client-admin"):
            self.assertIn(f"tls/{stem}.crt", files)
            mode = stat.S_IMODE((self.layout.tls / f"{stem}.key").stat().st_mode)
            self.assertEqual(mode, 0o600, stem)
        self.assertEqual(stat.S_IMODE(self.layout.tls.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(self.layout.token.stat().st_mode), 0o600)
        token_text = self.layout.token.read_text()
        hash_ = hashlib.sha256((self.layout.tls / "server-ca.crt").read_bytes()).hexdigest()
        self.assertRegex(token_text, rf"^K10{hash_}::server:[0-9a-f]{{32}}\n$")
        self.assertEqual(str(credentials.token), token_text.strip())
        self.assertEqual(self.layout.node_token.readlink(), Path("token"))
        self.assertEqual(self.layout.agent_token.readlink(), Path("token"))
        password = credentials.token.password
        self.assertEqual(
            self.layout.passwd.read_text(),
            f"{password},node,node,k3s:agent\n{password},server,server,k3s:server\n",
        )

    def test_admin_and_serving_certificates(self) -> None:
        """The admin is system:admin in system:masters; the serving cert has the SANs."""
        credentials = self.load()
        admin = credentials.admin.certificate
        self.assertEqual(admin.subject.rfc4514_string(), "CN=system:admin,O=system:masters")
        serving = credentials.serving.certificate
        self.assertEqual(SubjectAltNames.of_certificate(serving), self.names)

    def test_restart_reuses_everything_byte_for_byte(self) -> None:
        """A second start changes no byte on disk."""
        self.load()
        before = self.snapshot()
        self.load()
        self.assertEqual(self.snapshot(), before)

    def test_service_account_key_as_k3s_makes_it(self) -> None:
        """``tls/service.key``: an RSA 2048 private key in PKCS#1 PEM, 0600, no certificate."""
        credentials = self.load()
        path = self.layout.tls / "service.key"
        self.assertEqual(path.read_bytes(), credentials.service_key)
        self.assertTrue(credentials.service_key.startswith(b"-----BEGIN RSA PRIVATE KEY-----"))
        key = serialization.load_pem_private_key(credentials.service_key, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertFalse((self.layout.tls / "service.crt").exists())

    def test_corrupt_service_account_key_is_never_replaced(self) -> None:
        self.load()
        (self.layout.tls / "service.key").write_bytes(b"garbage")
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("service.key is not a PEM RSA private key", str(error))
        self.assertEqual((self.layout.tls / "service.key").read_bytes(), b"garbage")

    def test_san_change_reissues_only_the_serving_certificate(self) -> None:
        """A new --tls-san gives a new serving certificate under the same CAs."""
        self.load()
        before = self.snapshot()
        names = config(tls_sans=("new.example",)).serving_alt_names()
        credentials = self.load(alt_names=names)
        after = self.snapshot()
        changed = {k for k in before if before[k] != after[k]}
        self.assertEqual(
            changed, {"tls/serving-kube-apiserver.crt", "tls/serving-kube-apiserver.key"}
        )
        serving_names = SubjectAltNames.of_certificate(credentials.serving.certificate)
        self.assertIn("new.example", serving_names.dns_names)

    def test_serving_certificate_renewed_near_expiry(self) -> None:
        """Within 90 days of its end, the serving certificate is renewed at start."""
        self.load()
        old = self.snapshot()["tls/serving-kube-apiserver.crt"]
        self.load(now=NOW + datetime.timedelta(days=300))
        self.assertNotEqual(self.snapshot()["tls/serving-kube-apiserver.crt"], old)

    def test_token_sets_the_secret_on_first_start(self) -> None:
        """--token on a first start becomes the server password."""
        credentials = self.load(token="my-secret")
        self.assertEqual(credentials.token.password, "my-secret")
        self.assertTrue(self.layout.token.read_text().endswith("::server:my-secret\n"))

    def test_full_token_sets_the_password_part(self) -> None:
        """A K10 token without hash given as --token contributes its password."""
        credentials = self.load(token="K10::server:abc")
        self.assertEqual(credentials.token.password, "abc")

    def test_different_token_on_restart_is_refused(self) -> None:
        """A restart with another --token stops and changes nothing."""
        self.load(token="one")
        before = self.snapshot()
        error = self.assertRaises(StartupError, self.load, token="two")
        self.assertIn("--token does not match", str(error))
        self.assertEqual(self.snapshot(), before)

    def test_same_token_on_restart_is_fine(self) -> None:
        """The stored token, in any form, is accepted again."""
        credentials = self.load(token="one")
        self.load(token=str(credentials.token))
        self.load(token="one")
        self.load(token="K10::node:one")

    def test_token_for_another_ca_is_refused(self) -> None:
        """A full token whose CA hash is not this CA's is refused with k3s's words."""
        self.load()
        error = self.assertRaises(StartupError, self.load, token=f"K10{HASH}::server:x")
        self.assertIn("token CA hash does not match the Cluster CA certificate hash", str(error))

    def test_agent_token(self) -> None:
        """--agent-token writes agent-token with user node and the passwd node entry."""
        credentials = self.load(token="srv", agent_token="agt")
        hash_ = credentials.token.ca_hash
        self.assertFalse(self.layout.agent_token.is_symlink())
        self.assertEqual(self.layout.agent_token.read_text(), f"K10{hash_}::node:agt\n")
        self.assertEqual(
            self.layout.passwd.read_text(),
            "agt,node,node,k3s:agent\nsrv,server,server,k3s:server\n",
        )
        self.assertEqual(self.load().agent_password, "agt")
        self.assertRaises(StartupError, self.load, agent_token="other")

    def test_corrupt_ca_is_never_replaced(self) -> None:
        """A corrupt CA file stops the start, names the file, and nothing changes."""
        self.load()
        (self.layout.tls / "server-ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage")
        before = self.snapshot()
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("server-ca.crt is not a valid PEM certificate", str(error))
        self.assertIn("restore it from a backup", str(error))
        self.assertEqual(self.snapshot(), before)

    def test_missing_ca_key(self) -> None:
        """A CA certificate without its key is refused, not regenerated."""
        self.load()
        (self.layout.tls / "client-ca.key").unlink()
        before = self.snapshot()
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("client-ca.key is missing", str(error))
        self.assertEqual(self.snapshot(), before)

    def test_mismatched_key(self) -> None:
        """A key that is not the certificate's is refused."""
        self.load()
        other = new_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        (self.layout.tls / "server-ca.key").write_bytes(other)
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("does not belong to", str(error))

    def test_corrupt_leaf_names_the_remedy(self) -> None:
        """A corrupt derived file stops the start; deleting it has a new one issued."""
        self.load()
        (self.layout.tls / "client-admin.crt").write_text("nonsense")
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("delete both files", str(error))
        (self.layout.tls / "client-admin.crt").unlink()
        (self.layout.tls / "client-admin.key").unlink()
        self.load()
        self.assertTrue((self.layout.tls / "client-admin.crt").exists())

    def test_corrupt_token_file(self) -> None:
        """A token file that holds no token stops the start."""
        self.load()
        self.layout.token.write_text("\n")
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("does not hold a k3s token", str(error))

    def test_data_dir_that_is_a_file(self) -> None:
        """A data directory path that is a file is refused."""
        self.server_dir.parent.mkdir(parents=True)
        self.server_dir.write_text("not a directory")
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("is not a directory", str(error))

    def test_unreadable_file(self) -> None:
        """A file that cannot be read is an error naming it, with the reason."""
        self.load()
        ca = self.layout.tls / "server-ca.crt"
        ca.unlink()
        ca.mkdir()
        error = self.assertRaises(StartupError, self.load)
        self.assertIn("cannot read", str(error))
        self.assertIn("server-ca.crt", str(error))


class KubeconfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = new_ca("ca", NOW)
        self.admin = new_leaf(self.ca, "system:admin", Usage.CLIENT, NOW, ["system:masters"])

    def test_written_exactly_as_pyyaml_writes_it(self) -> None:
        """The template is PyYAML's safe_dump of the document, byte for byte; odd URLs quoted."""

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        for url in (
            "https://127.0.0.1:6443",
            "https://[2001:db8::1]:6443",
            "https://k3s.example.com:6443",
            "https://weird host:6443/#x",
        ):
            document = {
                "apiVersion": "v1",
                "clusters": [
                    {
                        "cluster": {
                            "certificate-authority-data": b64(self.ca.certificate_pem),
                            "server": url,
                        },
                        "name": "default",
                    }
                ],
                "contexts": [
                    {"context": {"cluster": "default", "user": "default"}, "name": "default"}
                ],
                "current-context": "default",
                "kind": "Config",
                "preferences": {},
                "users": [
                    {
                        "name": "default",
                        "user": {
                            "client-certificate-data": b64(self.admin.certificate_pem),
                            "client-key-data": b64(self.admin.key_pem),
                        },
                    }
                ],
            }
            rendered = render_kubeconfig(url, self.ca.certificate_pem, self.admin)
            self.assertEqual(yaml.safe_load(rendered), document, url)
            if " " not in url:
                expected = yaml.safe_dump(document, default_flow_style=False).encode()
                self.assertEqual(rendered, expected, url)

    def test_shape(self) -> None:
        """One cluster, user and context named default, with the CA and admin pair inline."""
        document = yaml.safe_load(
            render_kubeconfig("https://127.0.0.1:6443", self.ca.certificate_pem, self.admin)
        )
        cluster = document["clusters"][0]
        self.assertEqual(cluster["name"], "default")
        self.assertEqual(cluster["cluster"]["server"], "https://127.0.0.1:6443")
        self.assertEqual(
            base64.b64decode(cluster["cluster"]["certificate-authority-data"]),
            self.ca.certificate_pem,
        )
        user = document["users"][0]["user"]
        self.assertEqual(base64.b64decode(user["client-key-data"]), self.admin.key_pem)
        self.assertEqual(document["current-context"], "default")

    def test_mode_and_stability(self) -> None:
        """Written with the asked mode; rewriting the same content keeps the bytes."""
        path = Path(self.mktemp()) / "k3s.yaml"
        write_kubeconfig(path, "https://x:1", self.ca.certificate_pem, self.admin, 0o600)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        inode = path.stat().st_ino
        write_kubeconfig(path, "https://x:1", self.ca.certificate_pem, self.admin, 0o644)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o644)
        self.assertEqual(path.stat().st_ino, inode)


def _mode(connection: SSL.Connection) -> int:
    # pyOpenSSL has no getter, and refuses set_mode on a context in use.
    # SSL_set_mode ORs the bits in and returns the result: with 0, the mode as it is.
    return int(_openssl.SSL_set_mode(connection._ssl, 0))


def _tls_protocol(
    creator: IOpenSSLClientConnectionCreator | IOpenSSLServerConnectionCreator, client: bool
) -> TLSMemoryBIOProtocol:
    factory = TLSMemoryBIOFactory(creator, client, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    return protocol


class TLSContextTests(SynchronousTestCase):
    """
    Every TLS context releases OpenSSL's record buffers while a connection is
    idle: without SSL_MODE_RELEASE_BUFFERS each idle connection (an agent's
    tunnel, a kubectl watch) keeps 16-34 KB of read and write buffers.
    """

    def setUp(self) -> None:
        self.ca = new_ca("k3s-server-ca@1", NOW)
        self.client_ca = new_ca("k3s-client-ca@1", NOW)
        self.serving = new_leaf(
            self.ca, "k3s", Usage.SERVER, NOW, alt_names=SubjectAltNames.of(["127.0.0.1"])
        )
        self.client = new_leaf(
            self.client_ca, "system:node:box", Usage.CLIENT, NOW, ["system:nodes"]
        )

    def test_server_contexts_release_buffers(self) -> None:
        """The supervisor port and the kubelet API serve with released buffers."""
        for options in (
            server_tls_options(self.serving, self.ca.certificate_pem, self.client_ca),
            client_certificate_requesting_options(self.serving, self.client_ca.certificate_pem),
        ):
            connection = options.serverConnectionForTLS(_tls_protocol(options, client=False))
            self.assertTrue(_mode(connection) & SSL.MODE_RELEASE_BUFFERS)

    def test_client_contexts_release_buffers(self) -> None:
        """An agent's connections (tunnels, the load balancer's) and /cacerts's do too."""
        for policy in (
            PinnedCAPolicy(self.ca.certificate_pem, self.client),
            PinnedCAPolicy(self.ca.certificate_pem),
            UnverifiedPolicy(),
        ):
            creator = policy.creatorForNetloc(b"127.0.0.1", 6443)
            connection = creator.clientConnectionForTLS(_tls_protocol(creator, client=True))
            self.assertTrue(_mode(connection) & SSL.MODE_RELEASE_BUFFERS)
