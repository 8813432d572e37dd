"""The gRPC probe: its messages' encoding, kube's words, and a real health server on loopback."""

from __future__ import annotations

from concurrent import futures
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.kubelet.pods.probes import (
    USER_AGENT,
    NetworkProber,
    ProbeFailed,
    grpc_failure,
    health_request,
    health_status,
)


class HealthMessageTests(SynchronousTestCase):
    def test_a_request_carries_its_service_as_field_one(self) -> None:
        self.assertEqual(health_request(""), b"")
        self.assertEqual(health_request("api"), b"\x0a\x03api")
        self.assertEqual(health_request("s" * 200)[:3], b"\x0a\xc8\x01")

    def test_a_responses_status_is_named(self) -> None:
        self.assertEqual(health_status(b""), "UNKNOWN")
        self.assertEqual(health_status(b"\x08\x01"), "SERVING")
        self.assertEqual(health_status(b"\x08\x02"), "NOT_SERVING")
        self.assertEqual(health_status(b"\x08\x03"), "SERVICE_UNKNOWN")
        self.assertEqual(health_status(b"\x08\x07"), "7")
        # Fields a newer server adds are skipped.
        self.assertEqual(health_status(b"\x12\x02hi\x08\x01\x1d\x00\x00\x00\x00"), "SERVING")

    def test_failures_are_worded_as_kubes_grpc_prober(self) -> None:
        self.assertEqual(
            grpc_failure("UNIMPLEMENTED", "unknown service grpc.health.v1.Health", 1),
            "error: this server does not implement the grpc health protocol "
            "(grpc.health.v1.Health): unknown service grpc.health.v1.Health",
        )
        self.assertEqual(
            grpc_failure("DEADLINE_EXCEEDED", "Deadline Exceeded", 2),
            "timeout: health rpc did not complete within 2s",
        )
        self.assertEqual(
            grpc_failure("NOT_FOUND", "unknown service", 1),
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service",
        )
        self.assertEqual(
            grpc_failure("CANCELLED", "gone", 1),
            "error: health rpc probe failed: rpc error: code = Canceled desc = gone",
        )


class HealthServer:
    """A grpc.health.v1 server on 127.0.0.1: C{statuses} by service name (others NOT_FOUND)."""

    def __init__(self, statuses: dict[str, int]) -> None:
        import grpc

        self.statuses = statuses
        self.agents: list[str] = []

        def check(request: bytes, context: Any) -> bytes:
            metadata = dict(context.invocation_metadata())
            self.agents.append(str(metadata.get("user-agent", "")))
            service = request[2:].decode() if request else ""
            if service not in self.statuses:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return bytes([0x08, self.statuses[service]])

        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None).wait()


class NetworkProberGRPCTests(TestCase):
    """L{NetworkProber.grpc_check} against a real gRPC server on loopback."""

    def test_a_health_server_answers_with_each_services_status(self) -> Deferred[None]:
        server = HealthServer({"": 1, "api": 2})
        self.addCleanup(server.stop)
        prober = NetworkProber(reactor)

        async def check() -> None:
            self.assertEqual(await prober.grpc_check("127.0.0.1", server.port, "", 5), "SERVING")
            self.assertEqual(
                await prober.grpc_check("127.0.0.1", server.port, "api", 5), "NOT_SERVING"
            )
            with self.assertRaises(ProbeFailed) as failed:
                await prober.grpc_check("127.0.0.1", server.port, "db", 5)
            self.assertEqual(
                str(failed.exception),
                "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service",
            )
            self.assertTrue(server.agents[0].startswith(USER_AGENT), server.agents)

        return Deferred.fromCoroutine(check())

    def test_nothing_listening_times_out_connecting(self) -> Deferred[None]:
        server = HealthServer({})
        port = server.port
        server.stop()
        prober = NetworkProber(reactor)

        async def check() -> None:
            with self.assertRaises(ProbeFailed) as failed:
                await prober.grpc_check("127.0.0.1", port, "", 0.5)
            self.assertEqual(
                str(failed.exception),
                f'timeout: failed to connect service "127.0.0.1:{port}" within 0.5s: '
                "context deadline exceeded",
            )

        return Deferred.fromCoroutine(check())
