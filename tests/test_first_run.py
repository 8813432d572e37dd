"""
The README's first hour, as written: the built wheel installed into a fresh
virtualenv at the README's path, then its Quick start run command for command
on test machines (namespaces this test makes, so k3s's paths and ports are
theirs): a server, the real kubectl through the kubeconfig it wrote, an agent on
another machine joined with the printed token; a server and an agent on one
host; a server run by an ordinary user.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.machines import Machine, machines
from tests.support.wheel import SOURCE, build_wheel, install_wheel

README = SOURCE / "README.md"
KUBECTL = "kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"
#: The README's Install puts k3stw here.
VENV = re.findall(r"sudo python3 -m venv (\S+)", README.read_text())[0]


def section_blocks(heading: str) -> list[str]:
    """The ``sh`` code blocks of the README section under C{heading}, continuations joined."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    following = re.search(r"\n#{2,3} ", text[start + len(heading) + 2 :])
    end = start + len(heading) + 2 + following.start() if following else len(text)
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
    return [block.replace("\\\n", " ") for block in blocks]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.25)


class FirstRunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.opt = self.work / "opt"
        self.install()

    def install(self) -> None:
        """The README's Install, offline: a fresh virtualenv at its path holding the wheel."""
        wheel = build_wheel(self.work)
        self.opt.mkdir(parents=True)
        # Made in a mount namespace whose /opt writes land in self.opt; machines show it as /opt.
        # The interpreter this test's virtualenv was made from.
        python = Path(sys.base_prefix) / "bin" / "python3"
        make = f"mount --bind {self.opt} /opt && {python} -m venv --without-pip {VENV}"
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", make],
            check=True,
            capture_output=True,
            timeout=120,
        )
        bin_dir = self.opt / Path(VENV).relative_to("/opt") / "bin"
        # The venv's python links to an interpreter outside /opt: pip may use it from here.
        install_wheel(wheel, bin_dir / "python")
        # The dependencies come from this environment (offline), so pip wrote none of
        # their scripts: twistd's, as pip writes it when it installs Twisted.
        twistd = bin_dir / "twistd"
        twistd.write_text(
            f"#!{VENV}/bin/python\nimport sys\nfrom twisted.scripts.twistd import run\n"
            "sys.exit(run())\n"
        )
        twistd.chmod(0o755)

    def boot(self, count: int, runtime: bool = False) -> list[Machine]:
        """
        C{count} machines showing the installed /opt; with C{runtime}, the
        private /run and /var/lib/rancher the README's nodes need for the
        containerd they run by default.
        """
        found = machines(self, self.work / "machines", count)
        for machine in found:
            machine.boot(opt_layers=(self.opt,), runtime=runtime)
        return found

    def start(self, machine: Machine, command: str, name: str) -> subprocess.Popen[bytes]:
        log = machine.root / f"{name}.log"
        process = machine.spawn(command, log)
        self.addCleanup(self.check_log, log)
        return process

    def check_log(self, log: Path) -> None:
        addresses = [line for line in log.read_text().splitlines() if "object at 0x" in line]
        self.assertEqual(addresses, [], f"{log.name} logged object addresses")

    def wait_for_log(
        self, machine: Machine, name: str, text: str, process: subprocess.Popen[bytes]
    ) -> None:
        log = machine.root / f"{name}.log"

        def logged() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited {process.returncode}:\n{log.read_text()}")
            return text in log.read_text()

        wait_until(f"{text!r} in the {name} log", logged)

    def ready_nodes(self, machine: Machine, kubectl: str = KUBECTL) -> set[str]:
        nodes = json.loads(machine.run(f"{kubectl} get nodes -o json"))
        return {
            node["metadata"]["name"]
            for node in nodes["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions", ())
            )
        }

    def stop(self, machine: Machine, process: subprocess.Popen[bytes], data_dir: str) -> None:
        """
        SIGTERM through the pidfile the README names; a graceful stop within
        seconds, ending as twistd ends on a signal (re-raised: status 128 + 15).
        """
        machine.run(f"kill -TERM $(cat {data_dir}/k3stw.pid)")
        self.assertEqual(process.wait(15), 128 + 15)

    def test_quick_start_as_written(self) -> None:
        server_block, kubectl_block, agent_block = section_blocks("## Quick start")
        server, agent = self.boot(2, runtime=True)

        serving = self.start(server, server_block, "server")
        self.wait_for_log(server, "server", "k3s is up and running", serving)
        output = server.run(kubectl_block)
        self.assertIn("greeting: hi", output)
        token = output.strip().splitlines()[-1]
        self.assertRegex(token, r"^K10[0-9a-f]{64}::server:")

        command = agent_block.replace("<server>", server.address).replace("<token>", token)
        joining = self.start(agent, command, "agent")
        wait_until(
            "both machines' nodes Ready",
            lambda: self.ready_nodes(server) == {server.name, agent.name},
        )
        self.wait_for_log(agent, "agent", "Remotedialer connected to proxy", joining)
        self.assertIn(
            f"To join node to cluster: twistd -n k3s-agent --server https://{server.address}:6443",
            (server.root / "server.log").read_text(),
        )
        for machine, name in ((server, "server"), (agent, "agent")):
            # Each node runs containerd, as k3s does, and reports it.
            self.assertIn(
                "Container runtime containerd", (machine.root / f"{name}.log").read_text()
            )
        self.stop(agent, joining, "/var/lib/rancher/k3s")
        self.stop(server, serving, "/var/lib/rancher/k3s")

    def test_a_server_and_an_agent_on_one_host(self) -> None:
        (server_block, *_), (agent_block,) = (
            section_blocks("## Quick start"),
            section_blocks("### A server and an agent on one host"),
        )
        (host,) = self.boot(1, runtime=True)
        serving = self.start(host, server_block, "server")
        self.wait_for_log(host, "server", "k3s is up and running", serving)
        joining = self.start(host, agent_block, "agent")
        wait_until(
            "the server's node and the agent's Ready",
            lambda: self.ready_nodes(host) == {host.name, f"{host.name}-agent"},
        )
        self.stop(host, joining, "/var/lib/rancher/k3s-agent")
        self.stop(host, serving, "/var/lib/rancher/k3s")

    def test_a_server_run_by_an_ordinary_user(self) -> None:
        """k3s's rootless paths: state in ~/.rancher/k3s, the kubeconfig in ~/.kube/k3s.yaml."""
        ((block),) = section_blocks("### As an ordinary user")
        server_block, kubectl_block = block.strip().splitlines()
        (host,) = self.boot(1)
        host.run("useradd --create-home edge")
        # An ordinary user, who may still read what this test environment keeps under
        # root-only directories (the interpreter in /root/.pyenv, the test's /tmp files).
        as_edge = (
            "setpriv --reuid=edge --regid=edge --init-groups --inh-caps=+dac_read_search "
            "--ambient-caps=+dac_read_search env HOME=/home/edge USER=edge sh -c "
        )
        serving = self.start(host, as_edge + repr(server_block), "server")
        self.wait_for_log(host, "server", "k3s is up and running", serving)
        kubectl = "kubectl --kubeconfig /home/edge/.kube/k3s.yaml"
        self.assertIn("kubectl --kubeconfig ~/.kube/k3s.yaml get nodes", kubectl_block)
        wait_until("the user's node Ready", lambda: self.ready_nodes(host, kubectl) == {host.name})
        owners = host.run(
            "stat -c %U /home/edge/.rancher/k3s/server/token /home/edge/.kube/k3s.yaml"
        )
        self.assertEqual(owners.split(), ["edge", "edge"])
        host.run(as_edge + repr(kubectl_block))
        self.stop(host, serving, "/home/edge/.rancher/k3s")
