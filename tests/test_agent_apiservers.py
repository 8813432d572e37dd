"""
The agent's discovery of the cluster's servers, against an API stand-in
whose answers the test gives, on a Clock.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.agent.apiservers import APIServerDiscovery, endpoint_addresses
from k3stw.kubeclient import KubeAPIError, KubeClient


def endpoints(*ips: str, port: int | None = 6443, version: str = "1") -> dict[str, Any]:
    subset: dict[str, Any] = {"addresses": [{"ip": ip} for ip in ips]}
    if port is not None:
        subset["ports"] = [{"name": "https", "port": port, "protocol": "TCP"}]
    return {"metadata": {"name": "kubernetes", "resourceVersion": version}, "subsets": [subset]}


class FakeKube:
    """Records each request and leaves its answer to the test."""

    server_url = "https://127.0.0.1:6444"

    def __init__(self) -> None:
        self.fetches: list[tuple[str, Deferred[bytes]]] = []
        self.lists: list[Deferred[dict[str, Any]]] = []
        self.watches: list[tuple[dict[str, str], Any, Deferred[None]]] = []

    def fetch_raw(self, path: str) -> Deferred[bytes]:
        answer: Deferred[bytes] = Deferred()
        self.fetches.append((self.server_url + path, answer))
        return answer

    def call(self, method: str, path: str, params: dict[str, str]) -> Deferred[dict[str, Any]]:
        assert (method, path) == ("GET", "/api/v1/namespaces/default/endpoints")
        assert params["fieldSelector"] == "metadata.name=kubernetes"
        answer: Deferred[dict[str, Any]] = Deferred()
        self.lists.append(answer)
        return answer

    def watch(self, path: str, params: dict[str, str], on_event: Any) -> Deferred[None]:
        ended: Deferred[None] = Deferred()
        self.watches.append((params, on_event, ended))
        return ended


class EndpointAddressTests(SynchronousTestCase):
    def test_each_ready_address_with_the_first_port(self) -> None:
        document = endpoints("127.0.0.1", "2001:db8::1")
        self.assertEqual(endpoint_addresses(document), ["127.0.0.1:6443", "[2001:db8::1]:6443"])

    def test_no_port_means_443(self) -> None:
        self.assertEqual(endpoint_addresses(endpoints("127.0.0.1", port=None)), ["127.0.0.1:443"])

    def test_no_subsets(self) -> None:
        self.assertEqual(endpoint_addresses({"metadata": {"name": "kubernetes"}}), [])


class DiscoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.kube = FakeKube()
        self.updates: list[list[str]] = []
        self.discovery = APIServerDiscovery(
            self.clock, cast(KubeClient, self.kube), self.updates.append
        )
        self.discovery.startService()
        self.addCleanup(self.discovery.stopService)

    def start_watching(self, listed: dict[str, Any]) -> Any:
        """Answer the supervisor with nothing new and the list with C{listed}."""
        self.kube.fetches[-1][1].callback(b"[]")
        self.kube.lists[-1].callback(listed)
        return self.kube.watches[-1]

    def test_the_supervisors_list_applies_at_once(self) -> None:
        url, answer = self.kube.fetches[0]
        self.assertEqual(url, "https://127.0.0.1:6444/v1-k3s/apiservers")
        answer.callback(b'["127.0.0.1:6443", "127.0.0.2:6443"]')
        self.assertEqual(self.updates, [["127.0.0.1:6443", "127.0.0.2:6443"]])

    def test_watch_events_are_debounced(self) -> None:
        listed = {"metadata": {"resourceVersion": "5"}, "items": [endpoints("127.0.0.1")]}
        params, on_event, _ = self.start_watching(listed)
        self.assertEqual(params["resourceVersion"], "5")
        self.assertEqual(params["fieldSelector"], "metadata.name=kubernetes")
        # The list's answer waits out the debounce as well.
        self.clock.advance(0.5)
        on_event("MODIFIED", endpoints("127.0.0.1", "127.0.0.2", version="6"))
        self.clock.advance(0.9)
        on_event("MODIFIED", endpoints("127.0.0.2", version="7"))
        self.clock.advance(0.9)
        self.assertEqual(self.updates, [])
        self.clock.advance(0.1)
        self.assertEqual(self.updates, [["127.0.0.2:6443"]])

    def test_an_empty_list_is_ignored(self) -> None:
        _, on_event, _ = self.start_watching({"metadata": {"resourceVersion": "1"}})
        on_event("MODIFIED", {"metadata": {"name": "kubernetes", "resourceVersion": "2"}})
        self.clock.advance(1)
        self.assertEqual(self.updates, [])

    def test_a_watch_that_ends_resumes_from_the_last_version(self) -> None:
        _, on_event, ended = self.start_watching({"metadata": {"resourceVersion": "3"}})
        on_event("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
        ended.callback(None)
        params, _, _ = self.kube.watches[-1]
        self.assertEqual(len(self.kube.watches), 2)
        self.assertEqual(params["resourceVersion"], "9")

    def test_an_expired_watch_relists_and_asks_the_supervisor_again(self) -> None:
        _, _, ended = self.start_watching({"metadata": {"resourceVersion": "3"}})
        ended.errback(KubeAPIError("WATCH", "/x", 410, {"reason": "Expired", "code": 410}))
        self.assertEqual(len(self.kube.fetches), 2)
        self.kube.fetches[-1][1].callback(b'["127.0.0.3:6443"]')
        self.assertEqual(self.updates, [["127.0.0.3:6443"]])
        self.assertEqual(len(self.kube.lists), 2)

    def test_a_bad_supervisor_answer_only_logs(self) -> None:
        self.kube.fetches[0][1].callback(b'{"not": "a list"}')
        self.assertEqual(self.updates, [])
        self.assertEqual(len(self.kube.lists), 1)

    def test_stopping_cancels_the_pending_update(self) -> None:
        _, on_event, _ = self.start_watching({"metadata": {"resourceVersion": "1"}})
        on_event("ADDED", endpoints("127.0.0.4"))
        self.discovery.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.updates, [])
