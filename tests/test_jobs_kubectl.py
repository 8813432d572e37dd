"""
Jobs and CronJobs with the real kubectl against a real ``twistd -n k3s-server``:
no kubelet runs pods yet, so the test moves the Job's pod to Succeeded through
the status subresource, as a kubelet would.
"""

from __future__ import annotations

import json

from tests.support.kubectl import KubectlServerCase

HOST = "127.0.0.117"


class JobKubectlTests(KubectlServerCase):
    host = HOST

    def test_a_job_completes_when_its_pod_succeeds(self) -> None:
        self.kubectl("create", "job", "once", "--image=busybox", "--", "true")
        selector = "batch.kubernetes.io/job-name=once"
        self.kubectl("wait", "--for=create", "pod", "-l", selector, "--timeout=30s")
        pods = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
        [pod] = pods
        self.assertEqual(pod["metadata"]["finalizers"], ["batch.kubernetes.io/job-tracking"])
        self.kubectl(
            "patch",
            "pod",
            pod["metadata"]["name"],
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status": {"phase": "Succeeded"}}',
        )
        out = self.kubectl("wait", "--for=condition=complete", "job/once", "--timeout=30s")
        self.assertIn("job.batch/once condition met", out)
        self.assertIn("Complete", self.kubectl("get", "job", "once"))
        described = self.kubectl("describe", "job", "once")
        self.assertIn("Created pod: once-", described)
        self.assertIn("Job completed", described)

    def test_a_cronjob_is_accepted_and_listed(self) -> None:
        self.kubectl("create", "cronjob", "tick", "--image=busybox", "--schedule=*/1 * * * *")
        listed = self.kubectl("get", "cronjob", "tick")
        self.assertIn("*/1 * * * *", listed)
