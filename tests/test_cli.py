"""
The ``k3s`` command's parsing and dispatch, and what its commands compute
without a server: k3s's usage errors, the requests ``etcd-snapshot`` sends,
bootstrap token Secrets and who they authenticate, certificate checks and
rotation on a directory, and check-config's reading of a kernel config.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import json
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.cli import certificate, checkconfig, daemon, etcdsnapshot, kubectl, main, token
from k3stw.cli.common import CommandError
from k3stw.etcd.snapshotrecords import legacy_entry, legacy_key, record_name, snapshot_record
from k3stw.pki.certs import Usage, new_ca, new_leaf
from k3stw.supervisor.bootstraptokens import token_user

NOW = 1_800_000_000.0


def run(*argv: str) -> tuple[int, str, str]:
    """C{k3s argv...} in this process: its status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["k3s", *argv])
        except SystemExit as e:
            status = int(e.code or 0)
    return status, out.getvalue(), err.getvalue()


class DispatchTests(SynchronousTestCase):
    def test_an_unknown_command_is_refused_as_k3s_refuses_it(self) -> None:
        status, _, err = run("frobnicate")
        self.assertEqual((status, err), (3, "No help topic for 'frobnicate'\n"))

    def test_an_unknown_global_flag_is_incorrect_usage(self) -> None:
        status, _, err = run("--frobnicate=1")
        self.assertEqual(status, 1)
        self.assertTrue(
            err.startswith("Incorrect Usage: flag provided but not defined: -frobnicate\n")
        )

    def test_an_unknown_command_flag_is_incorrect_usage(self) -> None:
        status, _, err = run("etcd-snapshot", "save", "--frobnicate")
        self.assertEqual(status, 1)
        self.assertIn("Incorrect Usage: flag provided but not defined: -frobnicate", err)

    def test_an_unknown_subcommand_is_named(self) -> None:
        status, _, err = run("token", "mint")
        self.assertEqual(status, 1)
        self.assertIn("Incorrect Usage: argument command: invalid choice: 'mint'", err)

    def test_help_lists_every_command(self) -> None:
        status, out, _ = run("--help")
        self.assertEqual(status, 0)
        for name in ("server", "agent", "kubectl", "etcd-snapshot", "token", "certificate"):
            self.assertIn(f"   {name} ", out)
        self.assertIn("secrets-encrypt", out)
        self.assertIn("check-config", out)

    def test_server_and_agent_run_the_twistd_plugins_in_the_foreground(self) -> None:
        self.assertEqual(
            daemon.twistd_argv("server", ["--cluster-init"]),
            ["twistd", "--nodaemon", "--pidfile=", "k3s-server", "--cluster-init"],
        )
        self.assertEqual(daemon.twistd_argv("agent", [])[3], "k3s-agent")


class KubectlTests(SynchronousTestCase):
    def test_the_users_kubeconfig_wins(self) -> None:
        self.assertIsNone(kubectl.kubeconfig([], {"KUBECONFIG": "/mine"}))
        self.assertIsNone(kubectl.kubeconfig(["--kubeconfig=/mine", "get", "nodes"], {}))
        self.assertIsNone(kubectl.kubeconfig(["--kubeconfig", "/mine"], {}))

    def test_the_servers_kubeconfig_then_the_users_home(self) -> None:
        self.assertEqual(kubectl.kubeconfig([], {}, lambda _: True), kubectl.ROOT_KUBECONFIG)
        self.assertTrue(kubectl.kubeconfig([], {}, lambda _: False).endswith("/.kube/k3s.yaml"))  # type: ignore[union-attr]


class EtcdSnapshotTests(SynchronousTestCase):
    def body(self, *argv: str) -> dict[str, object]:
        return etcdsnapshot.request_body(etcdsnapshot.parser().parse_args(list(argv)))

    def test_save_sends_only_what_was_given(self) -> None:
        self.assertEqual(self.body("save"), {"operation": "save", "name": ["on-demand"]})
        self.assertEqual(
            self.body("save", "--name", "nightly", "--snapshot-compress", "--dir", "/srv/s"),
            {"operation": "save", "name": ["nightly"], "dir": "/srv/s", "compress": True},
        )

    def test_ls_and_its_aliases_list(self) -> None:
        for alias in ("ls", "list", "l"):
            self.assertEqual(self.body(alias)["operation"], "list")

    def test_delete_names_the_snapshots(self) -> None:
        self.assertEqual(self.body("delete", "a", "b"), {"operation": "delete", "name": ["a", "b"]})

    def test_prune_keeps_five_unless_told(self) -> None:
        self.assertEqual(self.body("prune")["retention"], 5)
        self.assertEqual(self.body("prune", "--etcd-snapshot-retention", "2")["retention"], 2)
        self.assertEqual(self.body("prune", "--snapshot-retention", "3")["retention"], 3)

    def test_delete_without_names_is_refused_in_k3s_words(self) -> None:
        status, _, err = run("etcd-snapshot", "delete")
        self.assertEqual(status, 1)
        self.assertIn("no snapshots given for removal", err)

    def test_ls_table_is_oldest_first(self) -> None:
        def item(name: str, created: str) -> dict[str, object]:
            return {
                "spec": {"snapshotName": name, "location": f"file:///s/{name}"},
                "status": {"size": "20512", "creationTime": created},
            }

        text = etcdsnapshot.table(
            {
                "items": [
                    item("b-n-2", "2027-01-01T00:00:02Z"),
                    item("a-n-1", "2027-01-01T00:00:01Z"),
                ]
            }
        )
        self.assertEqual(
            text.splitlines(),
            [
                "Name  Location        Size  Created",
                "a-n-1 file:///s/a-n-1 20512 2027-01-01T00:00:01Z",
                "b-n-2 file:///s/b-n-2 20512 2027-01-01T00:00:02Z",
            ],
        )


class BootstrapTokenTests(SynchronousTestCase):
    TOKEN = "abcdef.0123456789abcdef"

    def secret(self, **overrides: object) -> dict[str, object]:
        secret = token.token_secret(
            self.TOKEN, "for agents", token.DEFAULT_GROUPS, token.DEFAULT_USAGES, 3600, NOW
        )
        secret.update(overrides)
        return secret

    def test_generated_tokens_have_kubes_form(self) -> None:
        self.assertRegex(token.generate(), r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
        self.assertNotEqual(token.generate(), token.generate())

    def test_the_secret_is_kubes_bootstrap_token(self) -> None:
        secret = self.secret()
        self.assertEqual(
            secret["metadata"], {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
        )
        self.assertEqual(secret["type"], "bootstrap.kubernetes.io/token")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}  # type: ignore[attr-defined]
        self.assertEqual(
            data,
            {
                "token-id": "abcdef",
                "token-secret": "0123456789abcdef",
                "description": "for agents",
                "expiration": "2027-01-15T09:00:00Z",
                "usage-bootstrap-signing": "true",
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:k3s:default-node-token",
            },
        )

    def test_bad_tokens_groups_and_usages_are_refused(self) -> None:
        args = ("", token.DEFAULT_GROUPS, token.DEFAULT_USAGES, 0, NOW)
        self.assertRaises(CommandError, token.token_secret, "ABCDEF.0123456789abcdef", *args)
        error = self.assertRaises(
            CommandError, token.token_secret, self.TOKEN, "", "admins", "signing", 0, NOW
        )
        self.assertIn('must start with "system:bootstrappers:"', str(error))
        self.assertRaises(CommandError, token.token_secret, self.TOKEN, "", "", "root", 0, NOW)

    def test_the_token_authenticates_as_a_bootstrapper(self) -> None:
        now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
        user = token_user(self.secret(), self.TOKEN, now)
        assert user is not None
        self.assertEqual(user.name, "system:bootstrap:abcdef")
        self.assertEqual(
            user.groups, ("system:bootstrappers", "system:bootstrappers:k3s:default-node-token")
        )

    def test_a_wrong_expired_or_signing_only_token_authenticates_nobody(self) -> None:
        now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
        self.assertIsNone(token_user(self.secret(), "abcdef.0123456789abcdee", now))
        later = now + datetime.timedelta(hours=2)
        self.assertIsNone(token_user(self.secret(), self.TOKEN, later))
        signing = token.token_secret(self.TOKEN, "", "", "signing", 0, NOW)
        self.assertIsNone(token_user(signing, self.TOKEN, later))
        forever = token.token_secret(self.TOKEN, "", "", "authentication", 0, NOW)
        self.assertIsNotNone(token_user(forever, self.TOKEN, later))

    def test_list_shows_ttl_expiry_usages_and_groups(self) -> None:
        rows = token.list_rows([self.secret()], NOW + 60)
        self.assertEqual(
            rows[0], ("TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS")
        )
        self.assertEqual(
            rows[1],
            (
                "abcdef",
                "59m",
                "2027-01-15T09:00:00Z",
                "authentication,signing",
                "for agents",
                "system:bootstrappers:k3s:default-node-token",
            ),
        )


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        tls = self.data_dir / "server" / "tls"
        (tls / "etcd").mkdir(parents=True)
        (self.data_dir / "agent").mkdir()
        self.now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
        ca = new_ca("k3s-server-ca@1", self.now)
        (tls / "server-ca.crt").write_bytes(ca.certificate_pem)
        leaf = new_leaf(ca, "system:admin", Usage.CLIENT, self.now, ["system:masters"])
        for stem in ("client-admin", "etcd/client", "serving-kube-apiserver"):
            (tls / f"{stem}.crt").write_bytes(leaf.certificate_pem + ca.certificate_pem)
            (tls / f"{stem}.key").write_bytes(leaf.key_pem)
        (self.data_dir / "agent" / "client-kubelet.crt").write_bytes(leaf.certificate_pem)
        (self.data_dir / "agent" / "client-kubelet.key").write_bytes(leaf.key_pem)

    def test_every_certificate_of_a_server_is_checked(self) -> None:
        server, files = certificate.certificate_files(self.data_dir)
        self.assertTrue(server)
        rows = certificate.rows(files, self.now)
        names = sorted({row["filename"] for row in rows})
        self.assertEqual(
            names,
            ["client-admin.crt", "client-kubelet.crt", "client.crt", "server-ca.crt",
             "serving-kube-apiserver.crt"],
        )  # fmt: skip
        line = certificate.text_line(next(r for r in rows if r["subject"] == "system:admin"))
        self.assertRegex(
            line,
            r"^INFO\[0000\] client-\S+\.crt: certificate system:admin \(ClientAuth\) is ok, "
            r"expires at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
        )
        ca = next(r for r in rows if r["subject"] == "k3s-server-ca@1")
        self.assertEqual(ca["usages"], "CertSign")

    def test_near_expiry_and_expired_certificates_are_flagged(self) -> None:
        _, files = certificate.certificate_files(self.data_dir)
        later = self.now + datetime.timedelta(days=300)
        statuses = {r["subject"]: r["status"] for r in certificate.rows(files, later)}
        self.assertEqual(statuses["system:admin"], "WARNING")
        much_later = self.now + datetime.timedelta(days=400)
        rows = certificate.rows(files, much_later)
        expired = next(r for r in rows if r["subject"] == "system:admin")
        self.assertIn("expired at", certificate.text_line(expired))

    def test_rotate_backs_up_then_deletes_the_named_services_certificates(self) -> None:
        lines = certificate.rotate(self.data_dir, ["admin,etcd"], NOW)
        tls = self.data_dir / "server" / "tls"
        self.assertFalse((tls / "client-admin.crt").exists())
        self.assertFalse((tls / "etcd" / "client.key").exists())
        self.assertTrue((tls / "serving-kube-apiserver.crt").exists())
        self.assertTrue((tls / "server-ca.crt").exists())
        backup = self.data_dir / "server" / f"tls-{int(NOW)}"
        self.assertTrue((backup / "client-admin.crt").exists())
        self.assertEqual(
            lines,
            [
                "INFO[0000] Rotating certificates for admin",
                "INFO[0000] Rotating certificates for etcd",
                f"INFO[0000] Successfully backed up certificates to {backup}, please restart k3s "
                "server or agent to rotate certificates",
            ],
        )

    def test_an_unknown_service_is_refused_in_k3s_words(self) -> None:
        error = self.assertRaises(CommandError, certificate.rotate, self.data_dir, ["dns"], NOW)
        self.assertEqual(str(error), "service dns is not recognized")


class CheckConfigTests(SynchronousTestCase):
    def test_options_are_enabled_modules_or_missing(self) -> None:
        config = checkconfig.parse_config(
            "CONFIG_VETH=m\nCONFIG_BRIDGE=y\n# CONFIG_IP_VS is not set\n"
        )
        self.assertEqual(checkconfig.option_state(config, "VETH"), "enabled (as module)")
        self.assertEqual(checkconfig.option_state(config, "BRIDGE"), "enabled")
        self.assertEqual(checkconfig.option_state(config, "IP_VS"), "missing")

    def test_a_missing_necessary_option_fails_the_check(self) -> None:
        every = {name: "y" for name in checkconfig.NECESSARY}
        mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
        lines, failures = checkconfig.report(every, "/proc/config.gz", mounts, "cpuset cpu memory")
        self.assertEqual(failures, 0)
        self.assertIn(
            "- cgroup hierarchy: cgroups V2 mounted, cpu|cpuset|memory controllers status: good",
            lines,
        )
        del every["VETH"]
        lines, failures = checkconfig.report(every, "/proc/config.gz", mounts, "cpu memory")
        self.assertEqual(failures, 2)
        self.assertIn("- CONFIG_VETH: missing", lines)

    def test_no_kernel_config_is_said_and_fails(self) -> None:
        lines, failures = checkconfig.report(None, "(nowhere)", "", None)
        self.assertIn("- kernel config: not found, options not checked", lines)
        self.assertGreater(failures, 0)


class SnapshotRecordTests(SynchronousTestCase):
    """How a snapshot file is recorded, as k3s records it."""

    def test_the_record_of_a_local_snapshot(self) -> None:
        directory = Path(self.mktemp())
        (directory / ".metadata").mkdir(parents=True)
        path = directory / "on-demand-Server1-1800000000"
        path.write_bytes(b"x" * 20)
        (directory / ".metadata" / path.name).write_text('{"release":"v1"}')
        record = snapshot_record(path, "Server1", directory / ".metadata")
        location = path.absolute().as_uri()
        digest = hashlib.sha256(("Server1" + location).encode()).hexdigest()[:6]
        self.assertEqual(
            record["metadata"],
            {
                "name": f"local-on-demand-server1-1800000000-{digest}",
                "labels": {"etcd.k3s.cattle.io/snapshot-storage-node": "Server1"},
            },
        )
        self.assertEqual(
            record["spec"],
            {
                "snapshotName": path.name,
                "nodeName": "Server1",
                "location": location,
                "metadata": {"release": "v1"},
            },
        )
        self.assertEqual(
            record["status"],
            {"size": "20", "creationTime": "2027-01-15T08:00:00Z", "readyToUse": True},
        )
        entry = json.loads(legacy_entry(record))
        self.assertEqual(entry["size"], 20)
        self.assertEqual(json.loads(base64.b64decode(entry["metadata"])), {"release": "v1"})
        self.assertEqual(legacy_key("on-demand+x"), "local-on-demand_x")

    def test_a_name_that_is_no_dns_subdomain_is_replaced(self) -> None:
        name = record_name("Snap_1", "node.example", "file:///s/Snap_1", NOW)
        self.assertTrue(name.startswith("local-etcd-snapshot-node-1800000000-"), name)
