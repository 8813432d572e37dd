"""
Taint-based eviction with the real kubectl against a real ``twistd -n
k3s-server`` that runs its own node: ``kubectl taint node ... :NoExecute``
deletes the pods there that do not tolerate it, and only those.
"""

from __future__ import annotations

import json
import time

from tests.support.kubectl import KubectlServerCase

HOST = "127.0.0.118"


def pod_manifest(name: str, node: str, tolerations: list[dict[str, str]]) -> str:
    spec = {
        "nodeName": node,
        "tolerations": tolerations,
        "containers": [{"name": "c", "image": "busybox"}],
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


class TaintEvictionKubectlTests(KubectlServerCase):
    host = HOST

    def node_name(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = self.kubectl("get", "nodes", "-o", "name").split()
            if names:
                return names[0].removeprefix("node/")
            time.sleep(0.2)
        raise AssertionError("the server's node never registered")

    def test_a_no_execute_taint_deletes_the_pods_that_do_not_tolerate_it(self) -> None:
        node = self.node_name()
        self.kubectl("create", "-f", "-", stdin=pod_manifest("plain", node, []))
        tolerating = [{"key": "dedicated", "operator": "Equal", "value": "db"}]
        self.kubectl("create", "-f", "-", stdin=pod_manifest("tolerant", node, tolerating))
        self.addCleanup(self.kubectl_raw, "taint", "node", node, "dedicated=db:NoExecute-")
        self.kubectl("taint", "node", node, "dedicated=db:NoExecute")
        self.kubectl("wait", "--for=delete", "pod/plain", "--timeout=30s")
        self.assertIn("tolerant", self.kubectl("get", "pods", "-o", "name"))
        events = json.loads(
            self.kubectl(
                "get", "events", "--field-selector", "reason=TaintManagerEviction", "-o", "json"
            )
        )["items"]
        self.assertEqual(
            [(e["message"], e["source"]["component"]) for e in events],
            [("Marking for deletion Pod default/plain", "taint-eviction-controller")],
        )
