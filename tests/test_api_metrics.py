"""The API server's /metrics text, in Prometheus's format and kube-apiserver's names."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import configmaps, pods
from k3stw.apiserver.metrics import APIMetrics, RequestLabels


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = APIMetrics()

    def lines(self) -> list[str]:
        return self.metrics.exposition().decode().splitlines()

    def test_requests_are_counted_and_timed(self) -> None:
        listing = RequestLabels.of("list", configmaps.RESOURCE, "default", None, None)
        self.metrics.observe(listing, 200, 0.03)
        self.metrics.observe(listing, 200, 100.0)
        labels = (
            'component="apiserver",dry_run="",group="",resource="configmaps",'
            'scope="namespace",subresource="",verb="LIST",version="v1"'
        )
        lines = self.lines()
        self.assertIn(f'apiserver_request_total{{code="200",{labels}}} 2', lines)
        bucket = "apiserver_request_duration_seconds_bucket"
        self.assertIn(f'{bucket}{{{labels},le="0.025"}} 0', lines)
        self.assertIn(f'{bucket}{{{labels},le="0.05"}} 1', lines)
        self.assertIn(f'{bucket}{{{labels},le="60"}} 1', lines)
        self.assertIn(f'{bucket}{{{labels},le="+Inf"}} 2', lines)
        self.assertIn(f"apiserver_request_duration_seconds_count{{{labels}}} 2", lines)
        self.assertIn(f"apiserver_request_duration_seconds_sum{{{labels}}} 100.03", lines)

    def test_watches_are_counted_not_timed(self) -> None:
        watching = RequestLabels.of("watch", pods.RESOURCE, None, None, None)
        self.metrics.observe(watching, 200, 1800.0)
        self.metrics.watch_event(pods.RESOURCE)
        text = "\n".join(self.lines())
        self.assertIn('verb="WATCH"', text)
        self.assertNotIn("apiserver_request_duration_seconds_bucket", text)
        self.assertIn('apiserver_watch_events_total{group="",kind="Pod",version="v1"} 1', text)

    def test_label_values_are_escaped(self) -> None:
        self.metrics.storage_objects.set(('a"b\\c\nd',), 3)
        self.assertIn('apiserver_storage_objects{resource="a\\"b\\\\c\\nd"} 3', self.lines())
