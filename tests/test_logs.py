"""What k3stw's log lines look like where users read them."""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from k3stw.logs import JournalObserver


class JournalObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.log = Logger(namespace="k3stw.test", observer=JournalObserver(self.out))

    def test_each_line_carries_its_priority_and_no_timestamp(self) -> None:
        self.log.info("k3s is up and running")
        self.log.warn("Failed to connect to proxy {url}", url="wss://127.0.0.1:6443/v1-k3s/connect")
        self.log.critical("fatal {n}", n=1)
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                "<6>[k3stw.test#info] k3s is up and running",
                "<4>[k3stw.test#warn] Failed to connect to proxy wss://127.0.0.1:6443/v1-k3s/connect",
                "<2>[k3stw.test#critical] fatal 1",
            ],
        )

    def test_a_traceback_keeps_its_priority_on_every_line(self) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            self.log.failure("the sum failed", Failure(), LogLevel.error)
        lines = self.out.getvalue().splitlines()
        self.assertGreater(len(lines), 2)
        self.assertTrue(all(line.startswith("<3>") for line in lines), lines)
        self.assertIn("ZeroDivisionError", lines[-1])

    def test_legacy_errors_are_errors(self) -> None:
        self.log.emit(LogLevel.info, "old style", isError=1)
        self.assertTrue(self.out.getvalue().startswith("<3>"))
