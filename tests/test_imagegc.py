"""The kubelet's image garbage collection on an in-memory runtime, a fake disk and a clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.cri.memory import PAUSE_IMAGE, MemoryRuntime
from k3stw.kubelet.pods.imagegc import PERIOD, ImageGC, ImageGCFailed
from tests.support.fakes import FakeKubeClient
from tests.test_cri import _container_config, _sandbox_config

START = 1_800_000_000.0
EVENTS = "/api/v1/namespaces/default/events/"


class ImageGCTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.client = FakeKubeClient(self.clock)
        self.runtime = MemoryRuntime(self.clock, images=(PAUSE_IMAGE, "busybox:1.36"))
        self.runtime.images[PAUSE_IMAGE].pinned = True
        for image in self.runtime.images.values():
            image.size = 100
        # busybox runs in a container: in use.
        config = _sandbox_config()
        sandbox = self.successResultOf(self.runtime.run_pod_sandbox(config))
        container = self.successResultOf(
            self.runtime.create_container(
                sandbox, _container_config(image="docker.io/library/busybox:1.36"), config
            )
        )
        self.successResultOf(self.runtime.start_container(container))
        self.runtime.add_image("older:1", size=600)
        #: The image filesystem: 10 000 bytes, this much free.
        self.available = 5000
        self.gc = ImageGC(
            self.clock,
            self.runtime,
            self.client,
            "node-1",
            disk=lambda path: (10_000, self.available),
        )

    def collect(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.gc.collect())

    def images(self) -> list[str]:
        return sorted(self.runtime.images)

    def events(self) -> list[tuple[str, str, str]]:
        return [
            (e["type"], e["reason"], e["message"])
            for path, e in self.client.objects.items()
            if path.startswith(EVENTS)
        ]

    def test_nothing_is_collected_below_the_high_threshold(self) -> None:
        self.available = 1600  # 84% used
        self.successResultOf(self.collect())
        self.clock.advance(300)
        self.successResultOf(self.collect())
        self.assertEqual(len(self.images()), 3)

    def seen_in_turn(self) -> None:
        """older:1 seen at a first collection, old:1 at a second, ten minutes ago."""
        self.successResultOf(self.collect())
        self.clock.advance(60)
        self.runtime.add_image("old:1", size=600)
        self.successResultOf(self.collect())
        self.clock.advance(600)
        self.runtime.add_image("fresh:1", size=5000)

    def test_unused_images_go_down_to_the_low_threshold(self) -> None:
        self.seen_in_turn()
        self.available = 1000  # 90% used: 1000 bytes to free down to 80%.
        self.successResultOf(self.collect())
        self.assertEqual(
            self.images(),
            [
                "docker.io/library/busybox:1.36",  # in use
                "docker.io/library/fresh:1",  # seen less than two minutes ago
                PAUSE_IMAGE,  # pinned
            ],
        )
        self.assertEqual(self.events(), [])

    def test_the_least_recently_used_goes_first_and_no_more_than_needed(self) -> None:
        self.seen_in_turn()
        self.available = 1500  # 85% used: 500 bytes to free.
        self.successResultOf(self.collect())
        self.assertNotIn("docker.io/library/older:1", self.images())
        self.assertIn("docker.io/library/old:1", self.images())

    def test_not_enough_to_free_is_a_warning_on_the_node_and_repeated_failure_another(
        self,
    ) -> None:
        self.available = 500  # 95% used: 1500 bytes to free, 500 eligible at most.
        self.gc.startService()
        self.addCleanup(self.gc.stopService)
        self.clock.advance(PERIOD)
        message = (
            "Failed to garbage collect required amount of images. Attempted to free 1500 bytes,"
            " but only found 0 bytes eligible to free."
        )
        self.assertEqual(self.events(), [("Warning", "FreeDiskSpaceFailed", message)])
        self.clock.advance(PERIOD)
        reasons = sorted(reason for _, reason, _ in self.events())
        self.assertEqual(reasons, ["FreeDiskSpaceFailed", "FreeDiskSpaceFailed", "ImageGCFailed"])
        self.assertEqual(len(self.images()), 2)
        self.failureResultOf(self.collect(), ImageGCFailed)
