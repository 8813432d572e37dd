"""
The informer machinery on a Clock: the indexed cache, the work queue, the
informer's list/watch life, and the controller that ties them to C{sync(key)}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from k3stw.machinery.cache import (
    LABEL,
    NODE_NAME,
    OWNER_UID,
    Indexer,
    by_label,
    by_node_name,
    by_owner_uid,
)
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, Informer, Retention, SharedInformers
from k3stw.machinery.objects import Object
from k3stw.machinery.source import Expired, IListWatch
from k3stw.machinery.timing import Backoff
from k3stw.machinery.workqueue import QueueShutDown, WorkQueue
from tests.support.fakes import FakeListWatch


def pod(name: str, version: str = "1", **spec: Any) -> Object:
    return {
        "metadata": {"name": name, "namespace": "default", "resourceVersion": version},
        "spec": spec,
    }


class IndexerTests(SynchronousTestCase):
    def test_objects_by_key_and_namespace(self) -> None:
        cache = Indexer()
        cache.upsert(pod("a"))
        cache.upsert({"metadata": {"name": "n1"}})
        self.assertEqual(cache.keys(), ["default/a", "n1"])
        self.assertEqual([o["metadata"]["name"] for o in cache.by_index("namespace", "")], ["n1"])
        self.assertEqual(cache.index_keys("namespace", "default"), {"default/a"})

    def test_indexes_follow_updates_and_removals(self) -> None:
        cache = Indexer({NODE_NAME: by_node_name})
        cache.upsert(pod("a", nodeName="n1"))
        cache.upsert(pod("a", "2", nodeName="n2"))
        self.assertEqual(cache.index_keys(NODE_NAME, "n1"), set())
        self.assertEqual(cache.index_keys(NODE_NAME, "n2"), {"default/a"})
        cache.remove("default/a")
        self.assertEqual(cache.index_keys(NODE_NAME, "n2"), set())

    def test_owner_and_label_indexes(self) -> None:
        cache = Indexer({OWNER_UID: by_owner_uid, LABEL: by_label})
        child = pod("a")
        child["metadata"]["ownerReferences"] = [{"uid": "u1"}, {"uid": "u2"}]
        child["metadata"]["labels"] = {"app": "web"}
        cache.upsert(child)
        self.assertEqual(cache.index_keys(OWNER_UID, "u2"), {"default/a"})
        self.assertEqual(cache.index_keys(LABEL, "app=web"), {"default/a"})

    def test_an_index_added_later_covers_what_is_held(self) -> None:
        cache = Indexer()
        cache.upsert(pod("a", nodeName="n1"))
        cache.add_index(NODE_NAME, by_node_name)
        self.assertEqual(cache.index_keys(NODE_NAME, "n1"), {"default/a"})

    def test_replace_reports_what_changed(self) -> None:
        cache = Indexer()
        cache.upsert(pod("kept"))
        cache.upsert(pod("changed"))
        cache.upsert(pod("gone"))
        changes = cache.replace([pod("kept"), pod("changed", "2"), pod("new")])
        self.assertEqual([o["metadata"]["name"] for o in changes.added], ["new"])
        self.assertEqual([new["metadata"]["name"] for _, new in changes.updated], ["changed"])
        self.assertEqual([o["metadata"]["name"] for o in changes.removed], ["gone"])
        self.assertEqual(cache.keys(), ["default/changed", "default/kept", "default/new"])

    def test_an_unknown_index_is_an_error(self) -> None:
        self.assertRaises(KeyError, Indexer().by_index, "nope", "x")


class WorkQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = WorkQueue(self.clock, Backoff(1.0, 8.0))

    def take(self) -> str:
        return self.successResultOf(self.queue.get())

    def test_keys_in_order_and_duplicates_collapse(self) -> None:
        for key in ("a", "b", "a"):
            self.queue.add(key)
        self.assertEqual(len(self.queue), 2)
        self.assertEqual([self.take(), self.take()], ["a", "b"])
        self.assertNoResult(self.queue.get())

    def test_a_waiting_worker_gets_the_next_key(self) -> None:
        waiting = self.queue.get()
        self.assertNoResult(waiting)
        self.queue.add("a")
        self.assertEqual(self.successResultOf(waiting), "a")

    def test_a_key_is_in_flight_once_and_comes_back_after_done(self) -> None:
        self.queue.add("a")
        self.assertEqual(self.take(), "a")
        self.queue.add("a")
        self.queue.add("a")
        self.assertNoResult(self.queue.get())
        self.queue.done("a")
        self.assertEqual(len(self.queue), 0)  # handed to the worker that was waiting

    def test_add_after_waits_and_the_earlier_time_wins(self) -> None:
        self.queue.add_after("a", 10)
        self.queue.add_after("a", 3)
        self.queue.add_after("a", 5)
        self.clock.advance(2.9)
        self.assertEqual(len(self.queue), 0)
        self.clock.advance(0.1)
        self.assertEqual(self.take(), "a")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failures_back_off_until_forgotten(self) -> None:
        delays = [self.queue.add_rate_limited("a") for _ in range(5)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertEqual(self.queue.failures("a"), 5)
        self.queue.forget("a")
        self.assertEqual(self.queue.add_rate_limited("a"), 1.0)

    def test_shut_down_fails_workers_and_cancels_timers(self) -> None:
        waiting = self.queue.get()
        self.queue.add_after("b", 5)
        self.queue.shut_down()
        self.failureResultOf(waiting, QueueShutDown)
        self.failureResultOf(self.queue.get(), QueueShutDown)
        self.queue.add("c")
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def handler(self) -> EventHandler:
        return EventHandler(
            on_add=lambda o: self.events.append(("add", o["metadata"]["name"])),
            on_update=lambda old, new: self.events.append(
                ("update", new["metadata"]["name"], new["metadata"]["resourceVersion"])
            ),
            on_delete=lambda o: self.events.append(("delete", o["metadata"]["name"])),
        )


class InformerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = FakeListWatch()
        verifyObject(IListWatch, self.source)
        self.informer = Informer(self.source, self.clock, backoff=Backoff(1.0, 4.0))
        self.recorder = Recorder()
        self.informer.add_handler(self.recorder.handler())

    def start(self) -> None:
        self.informer.startService()
        self.addCleanup(self.informer.stopService)

    def test_lists_then_watches_from_the_lists_version(self) -> None:
        self.source.put("a", "default")
        synced = self.informer.when_synced()
        self.start()
        self.successResultOf(synced)
        self.assertTrue(self.informer.synced)
        self.assertEqual(self.source.stream.resource_version, "1")
        self.assertEqual(self.recorder.events, [("add", "a")])
        self.assertIsNotNone(self.informer.get("default/a"))

    def test_watch_events_reach_the_cache_and_the_handlers(self) -> None:
        self.start()
        self.source.send("ADDED", "a", "default")
        self.source.send("MODIFIED", "a", "default", spec={"x": 1})
        self.assertEqual(self.informer.get("default/a")["spec"], {"x": 1})  # type: ignore[index]
        self.source.send("DELETED", "a", "default")
        self.assertIsNone(self.informer.get("default/a"))
        self.assertEqual(
            self.recorder.events, [("add", "a"), ("update", "a", "2"), ("delete", "a")]
        )

    def test_a_watch_that_ends_resumes_from_the_last_version_without_listing(self) -> None:
        self.start()
        self.clock.advance(300)
        self.source.send("ADDED", "a", "default")
        self.source.stream.end()
        self.assertEqual(self.source.lists, 1)
        self.assertEqual(len(self.source.watches), 2)
        self.assertEqual(self.source.stream.resource_version, "1")

    def test_an_expired_watch_lists_again_at_once(self) -> None:
        self.source.put("a", "default")
        self.start()
        self.source.put("b", "default")
        del self.source.objects["default/a"]
        self.source.stream.fail(Expired("too old resource version"))
        self.assertEqual(self.source.lists, 2)
        self.assertEqual(self.informer.cache.keys(), ["default/b"])
        self.assertEqual(self.recorder.events, [("add", "a"), ("add", "b"), ("delete", "a")])

    def test_a_failed_list_is_retried_after_a_back_off(self) -> None:
        self.source.list_failures = [ConnectionError("refused"), ConnectionError("refused")]
        synced = self.informer.when_synced()
        self.start()
        self.assertNoResult(synced)
        self.clock.advance(1.0)
        self.assertEqual(self.source.lists, 2)
        self.clock.advance(1.9)
        self.assertEqual(self.source.lists, 2)
        self.clock.advance(0.1)
        self.successResultOf(synced)
        self.assertEqual(self.source.lists, 3)

    def test_a_broken_watch_waits_then_lists_again(self) -> None:
        self.start()
        self.source.stream.fail(ConnectionError("connection lost"))
        self.assertEqual(self.source.lists, 1)
        self.clock.advance(1.0)
        self.assertEqual(self.source.lists, 2)

    def test_a_very_short_empty_watch_counts_as_a_failure(self) -> None:
        self.start()
        self.source.stream.end()
        self.assertEqual(len(self.source.watches), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.source.lists, 2)

    def test_stop_cancels_the_watch_and_leaves_no_timer(self) -> None:
        self.start()
        stream = self.source.stream
        self.informer.stopService()
        self.assertTrue(stream.cancelled)
        self.source.list_failures = [ConnectionError("refused")]
        self.informer.startService()
        self.informer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_handler_does_not_stop_the_others(self) -> None:
        def broken(obj: Object) -> None:
            raise RuntimeError("bug")

        self.informer.add_handler(EventHandler(on_add=broken))
        self.start()
        self.source.send("ADDED", "a", "default")
        self.assertEqual(self.recorder.events, [("add", "a")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_retention_keeps_only_some_objects_yet_tells_of_all(self) -> None:
        kept = Retention(
            keep=lambda obj: "spec" in obj, trim=lambda obj: {"metadata": obj["metadata"]}
        )
        informer = Informer(self.source, self.clock, retention=kept)
        heard = Recorder()
        informer.add_handler(heard.handler())
        informer.startService()
        self.addCleanup(informer.stopService)
        self.source.send("ADDED", "plain", "default")
        self.source.send("ADDED", "special", "default", spec={"x": 1})
        self.assertEqual(informer.cache.keys(), ["default/special"])
        self.assertEqual(
            informer.get("default/special"),
            {"metadata": self.source.objects["default/special"]["metadata"]},
        )
        self.assertEqual(heard.events, [("add", "plain"), ("add", "special")])

    def test_a_late_handler_hears_of_what_is_held(self) -> None:
        self.source.put("a", "default")
        self.start()
        late = Recorder()
        self.informer.add_handler(late.handler())
        self.assertEqual(late.events, [("add", "a")])


class SharedInformersTests(SynchronousTestCase):
    def test_one_informer_per_key_running_with_the_factory(self) -> None:
        informers = SharedInformers(Clock())
        made: list[FakeListWatch] = []

        def source() -> FakeListWatch:
            made.append(FakeListWatch())
            return made[-1]

        first = informers.informer("pods", source)
        self.assertIs(informers.informer("pods", source), first)
        self.assertEqual(len(made), 1)
        informers.startService()
        self.assertTrue(first.running)
        informers.forget("pods")
        self.assertFalse(first.running)
        self.assertNotIn("pods", informers)
        informers.stopService()


class Echo(Controller):
    label = "echo"
    expected = (ConnectionError,)

    def __init__(self, clock: Clock, informer: Informer) -> None:
        super().__init__(clock, [informer], backoff=Backoff(1.0, 8.0))
        self.informer = informer
        informer.add_handler(self.enqueue_handler())
        self.synced: list[tuple[str, bool]] = []
        self.failing: set[str] = set()
        self.block: Deferred[None] | None = None

    async def sync(self, key: str) -> None:
        if self.block is not None:
            await self.block
        if key in self.failing:
            raise ConnectionError("datastore away")
        self.synced.append((key, self.informer.get(key) is not None))


class ControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = FakeListWatch()
        self.informer = Informer(self.source, self.clock, backoff=Backoff(1.0, 4.0))
        self.controller = Echo(self.clock, self.informer)

    def test_syncs_only_once_the_caches_are_filled(self) -> None:
        self.source.list_failures = [ConnectionError("refused")]
        self.source.put("a", "default")
        self.controller.startService()
        self.informer.startService()
        self.assertEqual(self.controller.synced, [])
        self.clock.advance(1.0)
        self.assertEqual(self.controller.synced, [("default/a", True)])
        self.source.send("DELETED", "a", "default")
        self.assertEqual(self.controller.synced[-1], ("default/a", False))

    def test_a_failed_sync_is_retried_with_back_off_then_forgotten(self) -> None:
        self.informer.startService()
        self.controller.startService()
        self.controller.failing.add("default/a")
        self.source.send("ADDED", "a", "default")
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.assertEqual(self.controller.queue.failures("default/a"), 3)
        self.controller.failing.clear()
        self.clock.advance(4.0)
        self.assertEqual(self.controller.synced, [("default/a", True)])
        self.assertEqual(self.controller.queue.failures("default/a"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_changes_during_a_sync_run_it_once_more(self) -> None:
        self.informer.startService()
        self.controller.startService()
        self.controller.block = Deferred()
        self.source.send("ADDED", "a", "default")
        self.source.send("MODIFIED", "a", "default")
        self.source.send("MODIFIED", "a", "default")
        block, self.controller.block = self.controller.block, None
        block.callback(None)
        self.assertEqual(self.controller.synced, [("default/a", True), ("default/a", True)])

    def test_stop_cancels_a_sync_in_flight(self) -> None:
        self.informer.startService()
        self.controller.startService()
        self.controller.block = Deferred()
        self.source.send("ADDED", "a", "default")
        self.controller.stopService()
        self.informer.stopService()
        self.assertEqual(self.controller.synced, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
