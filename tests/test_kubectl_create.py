"""
Every typed ``kubectl create`` subcommand of kubectl 1.32, run for real against a real
``twistd -n k3s-server``: each sends its object as protobuf, and the stored object reads back
(``kubectl get -o json``) with every field kubectl set (what ``--dry-run=client`` prints).

``kubectl create token`` is left to the token subresource's tests; the protobuf body it
sends is read in tests/test_protobuf.py.
"""

from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.kubectl import KubectlServerCase
from tests.support.twistd import admin_request

PROTOBUF = "application/vnd.kubernetes.protobuf"
PROTOBUF_SENT = f"Content-Type: {PROTOBUF}"


def empty(value: Any) -> bool:
    """Whether C{value} sets nothing (``creationTimestamp: null`` inside ``{}`` included)."""
    if isinstance(value, dict):
        return all(empty(item) for item in value.values())
    return value in ([], None)


def missing(want: Any, got: Any, path: str = "") -> list[str]:
    """Where C{got} lacks or differs from what C{want} sets."""
    if isinstance(want, dict) and isinstance(got, dict):
        return [
            problem
            for key, value in want.items()
            if not empty(value)
            for problem in missing(value, got.get(key), f"{path}.{key}")
        ]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        pairs = enumerate(zip(want, got, strict=True))
        return [problem for i, pair in pairs for problem in missing(*pair, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: {got!r}, not {want!r}"]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for ``kubectl create secret tls``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class KubectlCreateTests(KubectlServerCase):
    """One server for the class; each test creates its own names."""

    host = "127.0.0.12"

    def create(self, resource: str, *args: str, command: tuple[str, ...] = ()) -> dict[str, Any]:
        """
        ``kubectl create <args>``, checked to have sent protobuf; the stored C{resource}
        (``kind/name``) must hold every field of the dry run. The stored object.
        """
        tail = ("--", *command) if command else ()
        dry_run = self.kubectl("create", *args, "--dry-run=client", "-o", "json", *tail)
        intended = json.loads(dry_run)
        sent = self.kubectl_ok("create", *args, "-v=8", *tail)
        self.assertIn(PROTOBUF_SENT, sent.stderr)
        self.assertIn(" created", sent.stdout)
        stored: dict[str, Any] = json.loads(self.kubectl("get", resource, "-o", "json"))
        intended.pop("status", None)  # the server owns status
        intended["metadata"].pop("creationTimestamp", None)
        self.assertEqual(missing(intended, stored), [])
        return stored

    def test_deployment(self) -> None:
        """replicas 0 (a pointer's zero) and the container port survive the protobuf trip."""
        stored = self.create(
            "deploy/web", "deployment", "web", "--image=nginx:1.27", "--replicas=0", "--port=80"
        )
        self.assertEqual(stored["spec"]["replicas"], 0)
        container = stored["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["ports"][0]["containerPort"], 80)

    def test_deployment_with_command(self) -> None:
        self.create(
            "deploy/sleeper",
            "deployment",
            "sleeper",
            "--image=busybox:1.36",
            "--replicas=2",
            command=("sleep", "3600"),
        )

    def test_job_and_job_from_cronjob(self) -> None:
        """A job; a cronjob; a job from that cronjob, owned by it."""
        self.create("job/once", "job", "once", "--image=busybox:1.36", command=("echo", "hi"))
        cronjob = self.create(
            "cronjob/tick",
            "cronjob",
            "tick",
            "--image=busybox:1.36",
            "--schedule=*/5 * * * *",
            "--restart=OnFailure",
            command=("date",),
        )
        self.assertEqual(cronjob["spec"]["schedule"], "*/5 * * * *")
        job = self.create("job/manual", "job", "manual", "--from=cronjob/tick")
        self.assertEqual(
            job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual"
        )
        owner = job["metadata"]["ownerReferences"][0]
        self.assertEqual((owner["kind"], owner["uid"]), ("CronJob", cronjob["metadata"]["uid"]))

    def test_services(self) -> None:
        """clusterip (and headless), nodeport with its port, loadbalancer, externalname."""
        self.create("svc/cip", "service", "clusterip", "cip", "--tcp=80:8080")
        headless = self.create(
            "svc/headless", "service", "clusterip", "headless", "--clusterip=None"
        )
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        node_port = self.create(
            "svc/np", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080"
        )
        self.assertEqual(node_port["spec"]["ports"][0]["nodePort"], 30080)
        self.create("svc/lb", "service", "loadbalancer", "lb", "--tcp=443:8443")
        external = self.create(
            "svc/ext", "service", "externalname", "ext", "--external-name=db.example.com"
        )
        self.assertEqual(external["spec"]["type"], "ExternalName")

    def test_rbac(self) -> None:
        """role, rolebinding, clusterrole (rules, and aggregation), clusterrolebinding."""
        self.create(
            "role/reader",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
            "--resource-name=web",
        )
        self.create(
            "rolebinding/readers",
            "rolebinding",
            "readers",
            "--role=reader",
            "--user=alice",
            "--group=devs",
            "--serviceaccount=default:robot",
        )
        self.create(
            "clusterrole/node-reader",
            "clusterrole",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
            "--non-resource-url=/logs/*",
        )
        aggregated = self.create(
            "clusterrole/monitoring",
            "clusterrole",
            "monitoring",
            "--aggregation-rule=rbac.example.com/aggregate-to-monitoring=true",
        )
        selector = aggregated["aggregationRule"]["clusterRoleSelectors"][0]
        self.assertEqual(
            selector["matchLabels"], {"rbac.example.com/aggregate-to-monitoring": "true"}
        )
        self.create(
            "clusterrolebinding/node-readers",
            "clusterrolebinding",
            "node-readers",
            "--clusterrole=node-reader",
            "--user=bob",
        )

    def test_quota_and_priorityclass(self) -> None:
        """Quantities of a quota and its scopes; a priority class's value and policy."""
        quota = self.create(
            "quota/small", "quota", "small", "--hard=cpu=1,memory=1Gi,pods=2", "--scopes=BestEffort"
        )
        self.assertEqual(quota["spec"]["hard"], {"cpu": "1", "memory": "1Gi", "pods": "2"})
        priority = self.create(
            "priorityclass/high",
            "priorityclass",
            "high",
            "--value=1000",
            "--description=important",
            "--preemption-policy=Never",
        )
        self.assertEqual((priority["value"], priority["preemptionPolicy"]), (1000, "Never"))

    def test_ingress(self) -> None:
        """Rules with a service port by number and by name, TLS, class and annotations."""
        ingress = self.create(
            "ingress/shop",
            "ingress",
            "shop",
            "--rule=shop.example/api*=api:8080,tls=shop-cert",
            "--rule=shop.example/=web:http",
            "--class=traefik",
            "--annotation=team=store",
        )
        paths = ingress["spec"]["rules"][0]["http"]["paths"]
        self.assertEqual(paths[0]["backend"]["service"]["port"], {"number": 8080})

    def test_poddisruptionbudget(self) -> None:
        """minAvailable as a percentage, maxUnavailable as a number (int-or-strings)."""
        by_share = self.create(
            "pdb/half", "poddisruptionbudget", "half", "--selector=app=web", "--min-available=50%"
        )
        self.assertEqual(by_share["spec"]["minAvailable"], "50%")
        by_count = self.create(
            "pdb/one", "poddisruptionbudget", "one", "--selector=app=web", "--max-unavailable=1"
        )
        self.assertEqual(by_count["spec"]["maxUnavailable"], 1)

    def test_namespace_configmap_serviceaccount(self) -> None:
        self.create("namespace/made", "namespace", "made")
        self.create(
            "cm/settings", "configmap", "settings", "--from-literal=color=blue", "--from-literal=n="
        )
        self.create("sa/robot", "serviceaccount", "robot")

    def test_secrets(self) -> None:
        """generic (bytes as base64), tls (files), docker-registry (a JSON config)."""
        generic = self.create(
            "secret/pw", "secret", "generic", "pw", "--from-literal=password=hunter2"
        )
        self.assertEqual(generic["data"], {"password": "aHVudGVyMg=="})
        directory = Path(tempfile.mkdtemp(prefix="k3stw-tls-", dir=self.root))
        cert, key = self_signed(directory)
        tls = self.create("secret/site", "secret", "tls", "site", f"--cert={cert}", f"--key={key}")
        self.assertEqual(tls["type"], "kubernetes.io/tls")
        self.create(
            "secret/registry",
            "secret",
            "docker-registry",
            "registry",
            "--docker-username=u",
            "--docker-password=p",
            "--docker-server=registry.example",
        )

    def test_protobuf_delete_options_are_read(self) -> None:
        """
        A DELETE's protobuf DeleteOptions (kubectl drain's) is read, not ignored: a dry run
        deletes nothing; a body that is not DeleteOptions is refused.
        """
        self.kubectl("create", "configmap", "kept")
        path = "/api/v1/namespaces/default/configmaps/kept"
        type_meta = b"\x0a\x02v1\x12\x0dDeleteOptions"
        dry_run = b"k8s\x00\x0a\x13" + type_meta + b"\x12\x05\x2a\x03All"
        self.assertEqual(admin_request(self.root, "DELETE", path, dry_run, PROTOBUF)[0], 200)
        self.assertEqual(self.kubectl("get", "cm", "kept", "-o", "name"), "configmap/kept\n")
        not_options = dry_run.replace(b"\x0dDeleteOptions", b"\x0dDeleteOptionz")
        code, answer = admin_request(self.root, "DELETE", path, not_options, PROTOBUF)
        self.assertEqual((code, answer["reason"]), (415, "UnsupportedMediaType"))
