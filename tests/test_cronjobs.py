"""
The CronJob controller on the real object store over the in-memory
datastore, with the job controller beside it, on a Clock: Jobs start at their
schedule times as the clock moves, and the schedule arithmetic itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import cronjobs, events, jobs, pods
from k3stw.apiserver.kinds.cronjobs import Schedule, ScheduleError
from k3stw.controllers.cronjobs import SCHEDULED_TIMESTAMP, CronJobController, most_recent
from k3stw.controllers.jobs import JobController
from k3stw.machinery.objects import Object
from tests.support.apiserver import START, MemoryServer

NS = "default"
#: START is 2027-01-15T08:00:00Z, a Friday, on the minute.
MINUTE = int(START) // 60


def cronjob_manifest(name: str = "tick", schedule: str = "*/5 * * * *", **spec: Any) -> Object:
    template = {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}],
        }
    }
    return {
        "metadata": {"name": name},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"metadata": {"labels": {"app": name}}, "spec": {"template": template}},
            **spec,
        },
    }


class ScheduleTests(SynchronousTestCase):
    def at(self, text: str, zone: Any = UTC) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=zone)

    def test_steps_ranges_and_names(self) -> None:
        schedule = Schedule.parse("*/15 9-17 * jan-mar mon-fri")
        self.assertEqual(
            schedule.next_after(self.at("2027-01-15T17:50:00")), self.at("2027-01-18T09:00:00")
        )
        self.assertEqual(sorted(Schedule.parse("5/20 * * * *").minutes), [5, 25, 45])

    def test_a_restricted_day_of_month_or_week_is_either(self) -> None:
        # The 13th, or any Friday: cron's rule when neither day field is a star.
        schedule = Schedule.parse("0 0 13 * 5")
        self.assertEqual(
            schedule.next_after(self.at("2024-11-29T10:00:00")), self.at("2024-12-06T00:00:00")
        )

    def test_descriptors(self) -> None:
        self.assertEqual(
            Schedule.parse("@monthly").next_after(self.at("2024-11-29T10:00:00")),
            self.at("2024-12-01T00:00:00"),
        )
        with self.assertRaises(ScheduleError):
            Schedule.parse("@every 1h")

    def test_a_time_zone_schedules_in_its_wall_clock(self) -> None:
        berlin = ZoneInfo("Europe/Berlin")
        found = Schedule.parse("0 9 * * *").next_after(self.at("2024-07-01T10:00:00", berlin))
        assert found is not None
        self.assertEqual(found.astimezone(UTC), self.at("2024-07-02T07:00:00"))

    def test_most_recent_counts_the_missed_times(self) -> None:
        schedule = Schedule.parse("* * * * *")
        recent, missed = most_recent(
            schedule, self.at("2027-01-15T06:00:00"), self.at("2027-01-15T08:00:30")
        )
        self.assertEqual((recent, missed), (self.at("2027-01-15T08:00:00"), 120))


class CronJobTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        informers = self.server.informers
        self.controller = CronJobController(informers, self.store, "server")
        self.server.start(self.controller, JobController(informers, self.store))

    def create(self, name: str = "tick", schedule: str = "*/5 * * * *", **spec: Any) -> Object:
        manifest = cronjob_manifest(name, schedule, **spec)
        return self.server.run(self.store.create(cronjobs.RESOURCE, NS, manifest))

    def jobs(self) -> list[str]:
        listed = self.server.run(self.store.list(jobs.RESOURCE, NS)).items
        return sorted(
            j["metadata"]["name"] for j in listed if "deletionTimestamp" not in j["metadata"]
        )

    def cronjob(self, name: str = "tick") -> Object:
        return self.server.get("batch", "cronjobs", name, NS)

    def finish_job(self, name: str, phase: str = "Succeeded") -> None:
        """Finish the Job's pod, as a kubelet would report it."""
        self.clock.advance(1)
        for pod in self.server.run(self.store.list(pods.RESOURCE, NS)).items:
            owner = pod["metadata"]["ownerReferences"][0]["name"]
            if owner == name and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                pod["status"] = {**pod.get("status", {}), "phase": phase}
                self.server.run(
                    self.store.update(
                        pods.RESOURCE, NS, pod["metadata"]["name"], pod, subresource="status"
                    )
                )

    def reasons(self) -> list[str]:
        listed = self.server.run(self.store.list(events.RESOURCE, NS)).items
        return [e["reason"] for e in listed if e["involvedObject"]["kind"] == "CronJob"]

    def test_a_job_starts_at_each_schedule_time(self) -> None:
        self.create()
        self.assertEqual(self.jobs(), [])
        self.clock.advance(299)
        self.assertEqual(self.jobs(), [])
        self.clock.advance(1.5)
        first = f"tick-{MINUTE + 5}"
        self.assertEqual(self.jobs(), [first])
        job = self.server.get("batch", "jobs", first, NS)
        self.assertEqual(
            job["metadata"]["annotations"][SCHEDULED_TIMESTAMP], "2027-01-15T08:05:00Z"
        )
        self.assertEqual(job["metadata"]["labels"]["app"], "tick")
        self.assertEqual(job["metadata"]["ownerReferences"][0]["kind"], "CronJob")
        status = self.cronjob()["status"]
        self.assertEqual(status["lastScheduleTime"], "2027-01-15T08:05:00Z")
        self.assertEqual([a["name"] for a in status["active"]], [first])
        self.assertIn("SuccessfulCreate", self.reasons())
        self.finish_job(first)
        status = self.cronjob()["status"]
        self.assertNotIn("active", status)
        self.assertEqual(status["lastSuccessfulTime"], "2027-01-15T08:05:01Z")
        self.assertIn("SawCompletedJob", self.reasons())
        self.clock.advance(300)
        self.assertEqual(self.jobs(), [first, f"tick-{MINUTE + 10}"])

    def test_forbid_skips_while_a_job_runs(self) -> None:
        self.create(concurrencyPolicy="Forbid")
        self.clock.advance(300.5)
        self.clock.advance(300)
        self.assertEqual(self.jobs(), [f"tick-{MINUTE + 5}"])
        self.assertIn("JobAlreadyActive", self.reasons())

    def test_replace_deletes_the_running_job(self) -> None:
        self.create(concurrencyPolicy="Replace")
        self.clock.advance(300.5)
        self.clock.advance(300)
        self.assertEqual(self.jobs(), [f"tick-{MINUTE + 10}"])
        self.assertEqual(
            [a["name"] for a in self.cronjob()["status"]["active"]], [f"tick-{MINUTE + 10}"]
        )

    def test_allow_runs_jobs_side_by_side(self) -> None:
        self.create()
        self.clock.advance(300.5)
        self.clock.advance(300)
        self.assertEqual(self.jobs(), [f"tick-{MINUTE + 5}", f"tick-{MINUTE + 10}"])

    def test_finished_jobs_beyond_the_history_limit_go(self) -> None:
        self.create(successfulJobsHistoryLimit=1, schedule="* * * * *")
        made = []
        for _ in range(3):
            self.clock.advance(60.5)
            made.append(self.jobs()[-1])
            self.finish_job(made[-1])
        self.assertEqual(self.jobs(), made[-1:])
        self.assertIn("SuccessfulDelete", self.reasons())

    def test_a_suspended_cronjob_starts_nothing(self) -> None:
        self.create(suspend=True)
        self.clock.advance(900)
        self.assertEqual(self.jobs(), [])

    def test_a_missed_start_past_its_deadline_is_skipped(self) -> None:
        self.create(startingDeadlineSeconds=10)
        # The controller stops and misses 08:05; it looks again at 08:06.
        self.controller.stopService()
        self.clock.advance(360)
        self.controller.startService()
        self.assertEqual(self.jobs(), [])

    def test_the_schedule_follows_the_time_zone(self) -> None:
        # 08:00 UTC is 09:00 in Berlin: the 09:05 Berlin run is at 08:05 UTC.
        self.create(schedule="5 9 * * *", timeZone="Europe/Berlin")
        self.clock.advance(300.5)
        [name] = self.jobs()
        job = self.server.get("batch", "jobs", name, NS)
        self.assertEqual(
            job["metadata"]["annotations"][SCHEDULED_TIMESTAMP], "2027-01-15T09:05:00+01:00"
        )
        self.assertEqual(name, f"tick-{MINUTE + 5}")
