"""
The agent's read-only status page on a loopback port (``--lb-status-port``),
which k3s lacks: ``GET /`` lists every load balancer's servers with their
state, open connections and the reason of their last transition, as JSON;
``GET /metrics`` is the Prometheus exposition of the process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.iweb import IRequest
from twisted.web.resource import NoResource, Resource

from k3stw.loadbalancer.metrics import LoadBalancerMetrics
from k3stw.loadbalancer.service import LoadBalancerService


class _Leaf(Resource):
    isLeaf = True

    def render_HEAD(self, request: IRequest) -> bytes:
        return self.render_GET(request)  # type: ignore[attr-defined, no-any-return]


class _Status(_Leaf):
    def __init__(self, balancers: Sequence[LoadBalancerService]) -> None:
        super().__init__()
        self.balancers = balancers

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        document = {
            "loadBalancers": [
                {
                    "name": balancer.servers.name,
                    "listen": balancer.local_url,
                    "serverURL": balancer.server_url,
                    "servers": balancer.status(),
                }
                for balancer in self.balancers
            ]
        }
        return json.dumps(document, indent=2).encode() + b"\n"


class _Metrics(_Leaf):
    def __init__(self, metrics: LoadBalancerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics.registry)


class StatusPage(Resource):
    """``/`` (status) and ``/metrics``; anything else is 404."""

    def __init__(
        self, balancers: Sequence[LoadBalancerService], metrics: LoadBalancerMetrics
    ) -> None:
        super().__init__()
        self.status = _Status(balancers)
        self.putChild(b"metrics", _Metrics(metrics))

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        if path == b"":
            return self.status
        return NoResource()
