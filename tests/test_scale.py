"""The scale subresource: an autoscaling/v1 Scale over an object's replicas."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.scale import patched_scale, scale_of, write_scale
from tests.support.apiserver import MemoryServer


class ScaleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.statefulsets = self.server.resource("apps", "statefulsets")
        self.created = self.server.create(
            "apps",
            "statefulsets",
            {
                "metadata": {"name": "db"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {
                        "metadata": {"labels": {"app": "db"}},
                        "spec": {"containers": [{"name": "db", "image": "postgres"}]},
                    },
                },
                "status": {"replicas": 1},
            },
            "default",
        )

    def test_the_scale_of_a_catalogue_kind(self) -> None:
        self.assertIn("scale", self.statefulsets.subresources)
        scale = scale_of(self.created)
        self.assertEqual(scale["spec"], {"replicas": 2})
        self.assertEqual(scale["metadata"]["name"], "db")
        self.assertEqual(scale["status"]["selector"], "app=db")

    def test_a_patch_sets_replicas_and_nothing_else(self) -> None:
        change = patched_scale("application/merge-patch+json", {"spec": {"replicas": 5}})
        scaled = self.server.run(
            write_scale(self.server.store, self.statefulsets, "default", "db", change)
        )
        self.assertEqual(scaled["spec"]["replicas"], 5)
        stored = self.server.get("apps", "statefulsets", "db", "default")
        self.assertEqual(stored["spec"]["replicas"], 5)
        self.assertEqual(stored["spec"]["selector"], self.created["spec"]["selector"])

    def test_refusals_in_kubes_words(self) -> None:
        negative = self.server.fails(
            write_scale(
                self.server.store, self.statefulsets, "default", "db", {"spec": {"replicas": -1}}
            )
        )
        self.assertEqual(negative.code, 422)
        self.assertIn(
            'Scale.autoscaling "db" is invalid: spec.replicas: Invalid value: -1: must be '
            "greater than or equal to 0",
            negative.message,
        )
        stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 3}}
        conflict = self.server.fails(
            write_scale(self.server.store, self.statefulsets, "default", "db", stale)
        )
        self.assertEqual(conflict.code, 409)
