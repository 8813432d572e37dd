"""The k3s flag surface: command line, K3S_* variables, config files, precedence, errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from k3stw.logs import journal_observer
from k3stw.pki.token import Token
from k3stw.server.config import ServerConfig
from k3stw.tap import agent, server
from k3stw.tap import options as options_module
from k3stw.tap.options import AGENT_FLAGS, SERVER_FLAGS, ConfigurationError, K3sOptions


def parse(
    kind: type[K3sOptions],
    argv: list[str],
    env: dict[str, str] | None = None,
    config: str | None = None,
    tmp: Path | None = None,
) -> K3sOptions:
    """Parse C{argv} with only C{env} in the environment and C{config} as the config file."""
    environ = dict(env or {})
    if config is not None and tmp is not None:
        path = tmp / "config.yaml"
        path.write_text(config)
        environ.setdefault("K3S_CONFIG_FILE", str(path))
    elif "K3S_CONFIG_FILE" not in environ and "--config" not in argv and "-c" not in argv:
        environ["K3S_CONFIG_FILE"] = os.devnull
    options = kind(environ=environ)
    options.parseOptions(argv)
    return options


AGENT_REQUIRED = ["--server", "https://192.0.2.1:6443", "--token", "secret"]


class OptionsTestCase(SynchronousTestCase):
    def assertFails(
        self, kind: type[K3sOptions], argv: list[str], *fragments: str, **kw: Any
    ) -> str:
        """The parse exits with one line that names the problem."""
        with self.assertRaises(SystemExit) as caught:
            parse(kind, argv, **kw)
        message = str(caught.exception.code)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertTrue(message.startswith(kind.command + ": "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class DefaultsTests(OptionsTestCase):
    def test_server_defaults_are_k3s_defaults(self) -> None:
        """With nothing given, a server gets k3s's defaults."""
        options = parse(server.Options, [])
        self.assertEqual(options["https-listen-port"], 6443)
        self.assertEqual(options["bind-address"], "0.0.0.0")
        self.assertEqual(options["write-kubeconfig-mode"], 0o600)
        self.assertEqual(options["cluster-cidr"], "10.42.0.0/16")
        self.assertEqual(options["service-cidr"], "10.43.0.0/16")
        self.assertEqual(options["cluster-dns"], "10.43.0.10")  # in k3s's default service CIDR
        self.assertEqual(options["cluster-domain"], "cluster.local")
        self.assertEqual(options["tls-san"], ())
        self.assertIs(options["cluster-init"], False)
        self.assertIs(options["disable-agent"], False)
        self.assertEqual(options.sources["https-listen-port"], "default")

    def test_cluster_dns_follows_the_service_cidr(self) -> None:
        """Left at its default, --cluster-dns is the service CIDR's tenth address, as in k3s."""
        for argv, expected in (
            (["--service-cidr", "10.45.0.0/27"], "10.45.0.10"),
            ([], "10.43.0.10"),
        ):
            options = parse(server.Options, argv)
            assert isinstance(options, server.Options)
            self.assertEqual(server.server_config(options).cluster_dns, expected)

    def test_data_dir_and_kubeconfig_of_root(self) -> None:
        """Root gets /var/lib/rancher/k3s and /etc/rancher/k3s/k3s.yaml."""
        self.patch(os, "geteuid", lambda: 0)
        options = parse(server.Options, [])
        self.assertEqual(options["data-dir"], "/var/lib/rancher/k3s")
        self.assertEqual(options["write-kubeconfig"], "/etc/rancher/k3s/k3s.yaml")
        self.assertEqual(options["node-identity-dir"], "/etc/rancher/node")

    def test_data_dir_and_kubeconfig_of_an_ordinary_user(self) -> None:
        """Anyone else gets k3s's rootless paths: ~/.rancher/k3s, ~/.kube/k3s.yaml and the
        node's password under the data dir."""
        self.patch(os, "geteuid", lambda: 1000)
        self.patch(os, "environ", {**os.environ, "HOME": "/home/edge"})
        options = parse(server.Options, [])
        self.assertEqual(options["data-dir"], "/home/edge/.rancher/k3s")
        self.assertEqual(options["write-kubeconfig"], "/home/edge/.kube/k3s.yaml")
        identity = "/home/edge/.rancher/k3s/agent/etc/rancher/node"
        self.assertEqual(options["node-identity-dir"], identity)

    def test_agent_defaults(self) -> None:
        """An agent's load balancer listens on 6444 by default."""
        options = parse(agent.Options, AGENT_REQUIRED)
        self.assertEqual(options["lb-server-port"], 6444)


class CommandLineTests(OptionsTestCase):
    def test_every_server_flag_long_form(self) -> None:
        """Every server flag is accepted under its k3s long name and typed."""
        argv = [
            "--debug", "--data-dir", "/tmp/d", "--token", "t", "--token-file", "/tmp/tf",
            "--node-name", "n1", "--with-node-id", "--node-ip", "192.0.2.5",
            "--node-external-ip", "203.0.113.9", "--node-label", "a=b", "--node-taint",
            "k=v:NoSchedule", "--server", "https://s:6443", "--agent-token", "at",
            "--agent-token-file", "/tmp/atf", "--cluster-init", "--datastore-endpoint",
            "postgres://", "--datastore-cafile", "/ca", "--datastore-certfile", "/c",
            "--datastore-keyfile", "/k", "--bind-address", "127.0.0.9",
            "--https-listen-port", "7443", "--advertise-address", "192.0.2.6",
            "--advertise-port", "8443", "--tls-san", "a.example", "--write-kubeconfig",
            "/tmp/kc", "--write-kubeconfig-mode", "0644", "--disable-agent",
            "--cluster-cidr", "10.52.0.0/16", "--service-cidr", "10.53.0.0/16",
            "--cluster-dns", "10.53.0.10", "--cluster-domain", "example.local",  # in the CIDR
            "--node-monitor-grace-period", "5s", "--node-identity-dir", "/tmp/node",
            "--kubelet-arg", "port=10251", "--service-node-port-range", "31000-31999",
            "--kube-proxy-arg", "proxy-mode=nftables",
            "--unchecked-api", "--node-cidr-mask-size", "25", "--container-runtime",
            "containerd", "--container-runtime-endpoint", "/run/cri.sock", "--pause-image", "p:1",
            "--flannel-backend", "none", "--private-registry", "/tmp/r.yaml",
            "--disable", "local-storage,traefik", "--default-local-storage-path", "/srv/pv",
            "--flannel-iface", "eth1", "--disable-kube-proxy", "--disable-network-policy",
            "--secrets-encryption", "--secrets-encryption-provider", "secretbox",
            "--cluster-reset", "--cluster-reset-restore-path", "/tmp/snap", "--etcd-arg",
            "quota-backend-bytes=8589934592", "--etcd-expose-metrics", "--etcd-disable-snapshots",
            "--etcd-snapshot-name", "nightly", "--etcd-snapshot-schedule-cron", "0 */5 * * *",
            "--etcd-snapshot-retention", "7", "--etcd-snapshot-dir", "/tmp/snaps",
            "--etcd-snapshot-compress",
        ]  # fmt: skip
        options = parse(server.Options, argv)
        given = {f.name for f in SERVER_FLAGS} - {"config"}
        self.assertEqual({n for n in given if options.sources[n] == "command line"}, given)
        self.assertEqual(options["https-listen-port"], 7443)
        self.assertEqual(options["advertise-port"], 8443)
        self.assertEqual(options["write-kubeconfig-mode"], 0o644)
        self.assertEqual(options["node-ip"], ("192.0.2.5",))
        self.assertEqual(options["tls-san"], ("a.example",))
        self.assertEqual(options["disable"], ("local-storage", "traefik"))
        self.assertIs(options["cluster-init"], True)
        self.assertIs(options["with-node-id"], True)
        self.assertEqual(options["server"], "https://s:6443")
        self.assertEqual(options["node-monitor-grace-period"], 5.0)
        self.assertEqual(options["node-cidr-mask-size"], 25)
        self.assertEqual(options["service-node-port-range"], "31000-31999")
        self.assertIs(options["unchecked-api"], True)
        self.assertEqual(options["flannel-iface"], "eth1")
        self.assertIs(options["disable-network-policy"], True)
        self.assertIs(options["secrets-encryption"], True)
        self.assertEqual(options["secrets-encryption-provider"], "secretbox")
        self.assertEqual(options["etcd-arg"], ("quota-backend-bytes=8589934592",))
        self.assertEqual(options["etcd-snapshot-retention"], 7)
        self.assertEqual(options["etcd-snapshot-schedule-cron"], "0 */5 * * *")

    def test_every_agent_flag_long_form(self) -> None:
        """Every agent flag is accepted under its k3s long name."""
        argv = [
            "--debug", "--data-dir", "/tmp/d", "--token", "t", "--token-file", "/tmp/tf",
            "--node-name", "n1", "--with-node-id", "--node-ip", "192.0.2.5",
            "--node-external-ip", "203.0.113.9", "--node-label", "a=b", "--node-taint",
            "k=v:NoSchedule", "--server", "https://s:6443", "--lb-server-port", "7444",
            "--node-identity-dir", "/tmp/node", "--kubelet-arg", "port=10251",
            "--lb-status-port", "0", "--container-runtime", "none",
            "--container-runtime-endpoint", "unix:///run/cri.sock", "--pause-image", "p:1",
            "--private-registry", "/tmp/r.yaml", "--flannel-iface", "eth1",
            "--kube-proxy-arg", "proxy-mode=nftables",
        ]  # fmt: skip
        options = parse(agent.Options, argv)
        given = {f.name for f in AGENT_FLAGS} - {"config"}
        self.assertEqual({n for n in given if options.sources[n] == "command line"}, given)
        self.assertEqual(options["lb-server-port"], 7444)

    def test_short_flags(self) -> None:
        """k3s's short forms: -d, -t, -s, -i, -o, -c."""
        tmp = Path(self.mktemp())
        tmp.mkdir()
        (tmp / "c.yaml").write_text("")
        options = parse(
            server.Options,
            ["-d", "/x", "-t", "tok", "-s", "https://h:1", "-i", "192.0.2.11", "-o", "/kc",
             "-c", str(tmp / "c.yaml")],
        )  # fmt: skip
        self.assertEqual(
            (options["data-dir"], options["token"], options["server"], options["node-ip"]),
            ("/x", "tok", "https://h:1", ("192.0.2.11",)),
        )
        self.assertEqual(options["write-kubeconfig"], "/kc")
        self.assertEqual(options["config"], str(tmp / "c.yaml"))

    def test_repeatable_flags_accumulate_and_split_commas(self) -> None:
        """--tls-san may repeat and each value may hold a comma-separated list."""
        options = parse(server.Options, ["--tls-san", "a,b", "--tls-san", "192.0.2.1"])
        self.assertEqual(options["tls-san"], ("a", "b", "192.0.2.1"))

    def test_bad_port(self) -> None:
        """A port that is not a number from 1 to 65535 names the flag."""
        self.assertFails(server.Options, ["--https-listen-port", "abc"],
                         "--https-listen-port", '"abc"', "port")  # fmt: skip
        self.assertFails(server.Options, ["--https-listen-port", "70000"], "--https-listen-port")

    def test_bad_address(self) -> None:
        """An IP flag given a name says it wants an address."""
        self.assertFails(server.Options, ["--node-ip", "myhost"], "--node-ip", "IPv4 or IPv6")
        self.assertFails(server.Options, ["--bind-address", "1.2.3"], "--bind-address")

    def test_bad_mode(self) -> None:
        """A kubeconfig mode that is not octal is refused."""
        self.assertFails(server.Options, ["--write-kubeconfig-mode", "rw-r--r--"],
                         "--write-kubeconfig-mode", "octal")  # fmt: skip

    def test_bad_cidr(self) -> None:
        """A CIDR flag given garbage is refused."""
        self.assertFails(server.Options, ["--service-cidr", "10.43.0.0/40"], "--service-cidr")

    def test_bad_server_url(self) -> None:
        """--server must be an https URL."""
        self.assertFails(agent.Options, ["--server", "myserver:6443", "--token", "t"],
                         "--server", "https://")  # fmt: skip

    def test_bad_status_port(self) -> None:
        """--lb-status-port takes 0 (off) or a port."""
        self.assertFails(agent.Options, ["--server", "https://h:1", "--token", "t",
                         "--lb-status-port", "-1"], "--lb-status-port", "0 (off)")  # fmt: skip

    def test_kubelet_args(self) -> None:
        """port= sets the kubelet API's port; others are kept to be warned about; bad ones fail."""
        from k3stw.tap.options import ConfigurationError

        options = parse(server.Options, ["--kubelet-arg", "port=10251",
                                         "--kubelet-arg", "--max-pods=110"])  # fmt: skip
        settings = options.node_settings().kubelet_args
        self.assertEqual((settings.port, settings.ignored), (10251, ("--max-pods=110",)))
        self.assertEqual(parse(server.Options, []).node_settings().kubelet_args.port, 10250)
        for bad, words in (("port=0", "1-65535"), ("port=x", "1-65535"), ("max-pods", "=")):
            options = parse(server.Options, ["--kubelet-arg", bad])
            error = self.assertRaises(ConfigurationError, options.node_settings)
            self.assertIn(f"invalid kubelet-arg '{bad}'", str(error))
            self.assertIn(words, str(error))

    def test_kube_proxy_args(self) -> None:
        """proxy-mode= picks kube-proxy's mode (iptables by default); unknown modes fail."""
        self.assertEqual(parse(server.Options, []).node_settings().proxy_mode, "iptables")
        for given in ("proxy-mode=nftables", "--proxy-mode=nftables"):
            argv = ["--server", "https://h:1", "--token", "t", "--kube-proxy-arg", "v=2"]
            options = parse(agent.Options, [*argv, "--kube-proxy-arg", given])
            self.assertEqual(options.node_settings().proxy_mode, "nftables")
        for bad, words in (
            ("proxy-mode=userspace", 'Unsupported value: "userspace": supported values:'),
            ("proxy-mode=ipvs", "k3stw runs iptables or nftables"),
            ("proxy-mode", "expected name=value"),
        ):
            options = parse(server.Options, ["--kube-proxy-arg", bad])
            error = self.assertRaises(ConfigurationError, options.node_settings)
            self.assertIn(words, str(error))

    def test_container_runtime(self) -> None:
        """
        containerd as k3s runs it by default; no runtime with k3stw's
        ``--container-runtime none``; an existing CRI socket.
        """
        from k3stw.kubelet.containerd import RuntimeSettings

        for argv in ([], ["--container-runtime", "containerd"]):
            self.assertEqual(
                parse(server.Options, argv).node_settings().runtime,
                RuntimeSettings("", "rancher/mirrored-pause:3.6"),
            )
            self.assertEqual(
                parse(agent.Options, ["--server", "https://127.0.0.1:6443", "--token", "t", *argv])
                .node_settings()
                .runtime,
                RuntimeSettings("", "rancher/mirrored-pause:3.6"),
            )
        none = parse(server.Options, ["--container-runtime", "none"])
        self.assertIsNone(none.node_settings().runtime)
        options = parse(server.Options, ["--container-runtime-endpoint", "/run/c.sock"])
        self.assertEqual(options.node_settings().runtime, RuntimeSettings("/run/c.sock"))
        self.assertFails(server.Options, ["--container-runtime", "docker"], "containerd or none")
        self.assertFails(
            server.Options, ["--container-runtime-endpoint", "tcp://h:1"], "unix:///path"
        )

    def test_unknown_flag(self) -> None:
        """An unknown flag is one line, not a page of usage."""
        self.assertFails(server.Options, ["--no-such-flag"], "no-such-flag")

    def test_agent_requires_server_and_token(self) -> None:
        """k3s's words: --server is required, --token is required."""
        self.assertFails(agent.Options, ["--token", "t"], "--server is required")
        self.assertFails(agent.Options, ["--server", "https://h:6443"], "--token is required")

    def test_agent_token_file_satisfies_token(self) -> None:
        """--token-file stands in for --token."""
        options = parse(agent.Options, ["--server", "https://h:6443", "--token-file", "/f"])
        self.assertEqual(options["token-file"], "/f")


class EnvironmentTests(OptionsTestCase):
    def test_k3s_variables(self) -> None:
        """K3S_TOKEN, K3S_URL, K3S_NODE_NAME, K3S_DATASTORE_ENDPOINT and friends set flags."""
        env = {
            "K3S_TOKEN": "t", "K3S_URL": "https://s:6443", "K3S_NODE_NAME": "n",
            "K3S_DATASTORE_ENDPOINT": "mysql://", "K3S_KUBECONFIG_MODE": "644",
            "K3S_KUBECONFIG_OUTPUT": "/kc", "K3S_CLUSTER_INIT": "true", "K3S_DATA_DIR": "/d",
            "K3S_AGENT_TOKEN": "at", "K3S_TOKEN_FILE": "/tf",
        }  # fmt: skip
        options = parse(server.Options, [], env)
        self.assertEqual(options["token"], "t")
        self.assertEqual(options["server"], "https://s:6443")
        self.assertEqual(options["node-name"], "n")
        self.assertEqual(options["datastore-endpoint"], "mysql://")
        self.assertEqual(options["write-kubeconfig-mode"], 0o644)
        self.assertEqual(options["write-kubeconfig"], "/kc")
        self.assertIs(options["cluster-init"], True)
        self.assertEqual(options["data-dir"], "/d")
        self.assertEqual(options["agent-token"], "at")
        self.assertEqual(options.sources["token"], "K3S_TOKEN")

    def test_lb_server_port_variable(self) -> None:
        """K3S_LB_SERVER_PORT sets the agent's load balancer port."""
        options = parse(agent.Options, AGENT_REQUIRED, {"K3S_LB_SERVER_PORT": "7000"})
        self.assertEqual(options["lb-server-port"], 7000)

    def test_bad_boolean_variable(self) -> None:
        """A boolean variable accepts Go's spellings only, and the error names it."""
        self.assertFails(server.Options, [], "--cluster-init", "K3S_CLUSTER_INIT",
                         env={"K3S_CLUSTER_INIT": "yes please"})  # fmt: skip

    def test_command_line_beats_environment(self) -> None:
        """A flag on the command line wins over its variable."""
        options = parse(server.Options, ["--token", "cli"], {"K3S_TOKEN": "env"})
        self.assertEqual(options["token"], "cli")
        self.assertEqual(options.sources["token"], "command line")


class ConfigFileTests(OptionsTestCase):
    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()

    def test_keys_are_long_flag_names(self) -> None:
        """YAML keys are flag names; lists serve repeatable flags; booleans are YAML booleans."""
        config = (
            "https-listen-port: 7443\n"
            "write-kubeconfig-mode: 0644\n"
            "tls-san:\n  - one.example\n  - 192.0.2.1\n"
            "node-label: [a=b, c=d]\n"
            "cluster-init: true\n"
            'token: "abc"\n'
        )
        options = parse(server.Options, [], config=config, tmp=self.tmp)
        self.assertEqual(options["https-listen-port"], 7443)
        self.assertEqual(options["write-kubeconfig-mode"], 0o644)
        self.assertEqual(options["tls-san"], ("one.example", "192.0.2.1"))
        self.assertEqual(options["node-label"], ("a=b", "c=d"))
        self.assertIs(options["cluster-init"], True)
        self.assertEqual(options.sources["token"], str(self.tmp / "config.yaml"))

    def test_precedence(self) -> None:
        """Command line, then environment, then file, then default."""
        config = "token: file\nnode-name: file\ncluster-domain: file.local\n"
        options = parse(
            server.Options,
            ["--token", "cli"],
            {"K3S_TOKEN": "env", "K3S_NODE_NAME": "env"},
            config=config,
            tmp=self.tmp,
        )
        self.assertEqual(options["token"], "cli")
        self.assertEqual(options["node-name"], "env")
        self.assertEqual(options["cluster-domain"], "file.local")
        self.assertEqual(options["cluster-dns"], "10.43.0.10")  # in k3s's default service CIDR

    def test_command_line_list_replaces_file_list(self) -> None:
        """A repeatable flag given on the command line replaces the file's list."""
        options = parse(server.Options, ["--tls-san", "cli"], config="tls-san: [file]\n",
                        tmp=self.tmp)  # fmt: skip
        self.assertEqual(options["tls-san"], ("cli",))

    def test_dropins_override_in_order(self) -> None:
        """config.yaml.d/*.yaml apply after config.yaml, in name order."""
        dropins = self.tmp / "config.yaml.d"
        dropins.mkdir()
        (dropins / "20-b.yaml").write_text("node-name: second\n")
        (dropins / "10-a.yaml").write_text("node-name: first\ncluster-domain: a.local\n")
        options = parse(server.Options, [], config="node-name: main\n", tmp=self.tmp)
        self.assertEqual(options["node-name"], "second")
        self.assertEqual(options["cluster-domain"], "a.local")

    def test_config_flag_names_the_file(self) -> None:
        """--config points at another file."""
        other = self.tmp / "other.yaml"
        other.write_text("node-name: other\n")
        options = parse(server.Options, ["--config", str(other)])
        self.assertEqual(options["node-name"], "other")

    def test_default_file_may_be_absent(self) -> None:
        """The default file is optional; a named one is not."""
        self.assertFails(server.Options, ["--config", str(self.tmp / "missing.yaml")],
                         "missing.yaml", "does not exist")  # fmt: skip

    def test_unknown_key(self) -> None:
        """A key that is no flag is an error naming the key and the file."""
        message = self.assertFails(server.Options, [], "nonsense", config="nonsense: 1\n",
                                   tmp=self.tmp)  # fmt: skip
        self.assertIn("config.yaml", message)

    def test_other_roles_keys_are_ignored(self) -> None:
        """One config file can serve both roles: an agent ignores server-only keys."""
        options = parse(agent.Options, AGENT_REQUIRED, config="tls-san: [x]\n", tmp=self.tmp)
        self.assertEqual(options.ignored_keys, ["tls-san"])

    def test_bad_value_in_file(self) -> None:
        """A bad value names the flag and the file."""
        self.assertFails(server.Options, [], "--https-listen-port", "config.yaml",
                         config="https-listen-port: sixty\n", tmp=self.tmp)  # fmt: skip

    def test_list_for_single_value(self) -> None:
        """A list where one value is expected is refused."""
        self.assertFails(server.Options, [], "--node-name", "single value",
                         config="node-name: [a, b]\n", tmp=self.tmp)  # fmt: skip

    def test_not_yaml(self) -> None:
        """A file that is not YAML says so, with the line."""
        self.assertFails(server.Options, [], "not valid YAML", "line",
                         config="token: [unclosed\n", tmp=self.tmp)  # fmt: skip

    def test_not_a_mapping(self) -> None:
        """A YAML list at the top is refused."""
        self.assertFails(server.Options, [], "mapping", config="- a\n- b\n", tmp=self.tmp)


class TokenFileTests(OptionsTestCase):
    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()

    def test_token_file_is_read(self) -> None:
        """--token-file's content, stripped, is the token."""
        (self.tmp / "t").write_text("K10::node:secret\n")
        options = parse(server.Options, ["--token-file", str(self.tmp / "t")])
        self.assertEqual(options.token(), Token("", "node", "secret"))

    def test_token_flag_beats_token_file(self) -> None:
        """--token wins over --token-file."""
        options = parse(server.Options, ["--token", "a", "--token-file", "/nonexistent"])
        self.assertEqual(options.token(), Token("", "", "a"))

    def test_malformed_token(self) -> None:
        """A malformed token names the flag and k3s's reason."""
        from k3stw.tap.options import ConfigurationError

        options = parse(server.Options, ["--agent-token", "K10abc::node:x"])
        error = self.assertRaises(ConfigurationError, options.token, "agent-token")
        self.assertEqual(str(error), "invalid --agent-token: invalid token CA hash length")

    def test_missing_or_empty_token_file(self) -> None:
        """An unreadable or empty token file is a clear error."""
        from k3stw.tap.options import ConfigurationError

        options = parse(server.Options, ["--token-file", str(self.tmp / "none")])
        self.assertRaises(ConfigurationError, options.token)
        (self.tmp / "empty").write_text("\n")
        options = parse(server.Options, ["--token-file", str(self.tmp / "empty")])
        error = self.assertRaises(ConfigurationError, options.token)
        self.assertIn("empty", str(error))


class DocumentationTests(OptionsTestCase):
    ROOT = Path(__file__).resolve().parents[1]

    def test_readme_lists_every_flag(self) -> None:
        """The README's options table names every flag of both roles."""
        readme = (self.ROOT / "README.md").read_text()
        for flag in SERVER_FLAGS + AGENT_FLAGS:
            self.assertIn(f"| `--{flag.name}`", readme, flag.name)

    def test_example_config_is_valid_for_both_roles(self) -> None:
        """etc/config.yaml parses for a server and for an agent."""
        example = str(self.ROOT / "etc" / "config.yaml")
        server_options = parse(server.Options, ["--config", example])
        self.assertEqual(server_options["write-kubeconfig-mode"], 0o644)
        agent_options = parse(agent.Options, [*AGENT_REQUIRED, "--config", example])
        self.assertIn("tls-san", agent_options.ignored_keys)


class DebugTests(OptionsTestCase):
    def test_debug_lets_debug_events_through(self) -> None:
        """k3stw's Logger drops debug events unless --debug turned them on."""
        from twisted.logger import capturedLogs

        from k3stw import logs

        log = logs.Logger(namespace="test")
        self.addCleanup(logs.set_debug, False)
        with capturedLogs() as events:
            logs.set_debug(False)
            log.debug("hidden")
            log.info("shown")
            logs.set_debug(True)
            log.debug("now shown")
        self.assertEqual([e["log_format"] for e in events], ["shown", "now shown"])


class TwistdDefaultsTests(OptionsTestCase):
    """What the plugins settle of twistd's own options (they run as its sub-commands)."""

    def twistd(self, data_dir: Path, *given: str) -> ServerOptions:
        """twistd's own options, parsed with a k3s-server sub-command, as twistd parses them."""
        self.patch(os, "environ", {**os.environ, "K3S_CONFIG_FILE": os.devnull})
        options = ServerOptions()
        options.parseOptions([*given, "k3s-server", "--data-dir", str(data_dir)])
        return options

    def test_the_pidfile_lives_in_the_data_dir(self) -> None:
        """Two servers started from one directory no longer collide on ./twistd.pid."""
        data_dir = Path(self.mktemp())
        self.assertEqual(self.twistd(data_dir)["pidfile"], str((data_dir / "k3stw.pid").absolute()))
        self.assertTrue(data_dir.is_dir())

    def test_a_given_pidfile_is_kept(self) -> None:
        self.assertEqual(self.twistd(Path(self.mktemp()), "--pidfile=")["pidfile"], "")
        given = self.twistd(Path(self.mktemp()), "--pidfile", "/run/k3s.pid")
        self.assertEqual(given["pidfile"], "/run/k3s.pid")

    def test_a_data_dir_in_use_is_one_line_that_says_what_to_do(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        (data_dir / "k3stw.pid").write_text(str(os.getpid()))
        with self.assertRaises(SystemExit) as caught:
            self.twistd(data_dir)
        message = str(caught.exception.code)
        self.assertEqual(len(message.splitlines()), 1)
        for fragment in (f"PID {os.getpid()}", str(data_dir), "its own --data-dir"):
            self.assertIn(fragment, message)

    def test_a_stale_pidfile_is_left_to_twistd(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        (data_dir / "k3stw.pid").write_text("999999999")
        self.assertEqual(self.twistd(data_dir)["pidfile"], str((data_dir / "k3stw.pid").absolute()))

    def test_a_data_dir_that_cannot_be_made_is_one_line(self) -> None:
        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        with self.assertRaises(SystemExit) as caught:
            self.twistd(blocker / "data")
        self.assertIn(f"cannot create --data-dir {blocker / 'data'}", str(caught.exception.code))

    def test_journal_output_under_systemd(self) -> None:
        """When systemd gives standard output to the journal, lines carry its priorities."""
        status = os.fstat(1)
        self.patch(
            os, "environ", {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        )
        self.assertIs(self.twistd(Path(self.mktemp()))["logger"], journal_observer)
        # Not when the user chose a log file, nor without the journal.
        self.assertIsNone(self.twistd(Path(self.mktemp()), "--logfile", "k3s.log")["logger"])
        self.patch(os, "environ", {**os.environ, "JOURNAL_STREAM": "1:2"})
        self.assertIsNone(self.twistd(Path(self.mktemp()))["logger"])


class PortRangeTests(OptionsTestCase):
    def test_a_bad_node_port_range_is_one_line(self) -> None:
        for bad in ("30000", "32767-30000", "0-10", "a-b"):
            self.assertFails(
                server.Options,
                ["--service-node-port-range", bad],
                "--service-node-port-range",
                "expected a port range such as 30000-32767",
            )


class HelpTests(OptionsTestCase):
    def test_help_groups_every_flag_as_k3s_does(self) -> None:
        """Each flag once, under its k3s group, with its default and variable."""
        for kind in (server.Options, agent.Options):
            text = str(kind())
            for flag in kind.flags:
                with self.subTest(command=kind.command, flag=flag.name):
                    self.assertEqual(text.count(f"   --{flag.name} "), 1)
            self.assertIn(kind.summary, text)
        text = str(server.Options())
        self.assertIn("(listener) HTTPS listen port (default: 6443)", text)
        self.assertIn("[$K3S_TOKEN]", text)
        self.assertNotIn("NATS", text)
        grouped = [name for _, names in options_module.HELP_GROUPS for name in names]
        self.assertEqual(len(grouped), len(set(grouped)))
        every = {f.name for f in SERVER_FLAGS} | {f.name for f in AGENT_FLAGS}
        self.assertEqual(set(grouped), every)


class EmbeddedEtcdChoiceTests(OptionsTestCase):
    def config(self, *argv: str) -> ServerConfig:
        options = parse(server.Options, ["--data-dir", self.mktemp(), *argv])
        assert isinstance(options, server.Options)
        return server.server_config(options)

    def test_cluster_init_and_a_join_run_a_member(self) -> None:
        """--cluster-init, or a server's --server without a datastore, selects embedded etcd."""
        first = self.config("--cluster-init", "--etcd-arg", "quota-backend-bytes=8589934592")
        assert first.etcd is not None
        self.assertTrue(first.etcd.cluster_init)
        self.assertEqual(dict(first.etcd.extra or {}), {"quota-backend-bytes": 8589934592})
        joining = self.config("--server", "https://192.0.2.1:6443")
        assert joining.etcd is not None
        self.assertEqual(joining.etcd.join_url, "https://192.0.2.1:6443")
        self.assertIsNone(self.config().etcd)

    def test_embedded_etcd_flags_with_an_external_datastore_are_refused(self) -> None:
        """Servers on one external datastore do not join each other: refused, never ignored."""
        for flag in (["--cluster-init"], ["--server", "https://192.0.2.1:6443"]):
            with self.assertRaises(ConfigurationError) as caught:
                self.config(*flag, "--datastore-endpoint", "postgres://")
            message = str(caught.exception)
            self.assertIn(f"{flag[0]} (from command line) is for embedded etcd", message)

    def test_restore_path_needs_cluster_reset(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            self.config("--cluster-init", "--cluster-reset-restore-path", "/tmp/snap")
        self.assertIn("requires --cluster-reset", str(caught.exception))

    def test_an_etcd_arg_without_a_value_is_refused(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            self.config("--cluster-init", "--etcd-arg", "quota-backend-bytes")
        self.assertIn("expected key=value", str(caught.exception))
