"""
The process supervisor and one-shot commands: units on an in-memory process
reactor under a fake clock, then real C{/bin/sh} children on the real reactor.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from k3stw.machinery.processes import (
    PIPE_GRACE,
    CommandFailed,
    CommandResult,
    ProcessStartError,
    SupervisedProcess,
    run_command,
)
from k3stw.machinery.timing import Backoff, fixed
from tests.support.processes import FakeProcess, FakeProcessReactor

reactor = cast(IReactorProcess, _reactor)
SH = "/bin/sh"


class LogRecorder:
    """Every log event during a test; lets a test wait for one."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        self._waiting: list[tuple[Callable[[str], bool], Deferred[str]]] = []
        observer = cast(ILogObserver, self._observe)
        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)

    @property
    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def wait_for(self, text: str, count: int = 1) -> Deferred[str]:
        """Fires once C{count} lines containing C{text} were logged."""
        waiter: Deferred[str] = Deferred()
        seen = [0]

        def match(line: str) -> bool:
            if text in line:
                seen[0] += 1
            return seen[0] >= count

        for line in self.lines:
            if match(line):
                waiter.callback(line)
                return waiter
        self._waiting.append((match, waiter))
        return waiter

    def _observe(self, event: LogEvent) -> None:
        self.events.append(event)
        line = formatEvent(event)
        for entry in list(self._waiting):
            match, waiter = entry
            if match(line):
                self._waiting.remove(entry)
                waiter.callback(line)


class FakeProcessReactorTests(SynchronousTestCase):
    def test_fakes_provide_the_interfaces(self) -> None:
        """The fake reactor and its processes provide what Twisted's do."""
        fake = FakeProcessReactor()
        verifyObject(IReactorProcess, fake)
        service = SupervisedProcess(fake, "child", [SH])
        service.startService()
        verifyObject(IProcessTransport, fake.last)
        service.stopService()
        fake.last.exit()


class SupervisedProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.logs = LogRecorder(self)

    def supervise(self, argv: list[str] | None = None, **kwargs: Any) -> SupervisedProcess:
        kwargs.setdefault("backoff", Backoff(1.0, 8.0))
        service = SupervisedProcess(self.reactor, "etcd", argv or [SH, "-c", "serve"], **kwargs)
        service.startService()
        return service

    def assertNoDelayedCalls(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_spawns_the_command_with_its_environment_and_directory(self) -> None:
        """The child runs the given argv, environment and working directory, stdin closed."""
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        service = self.supervise([SH, "-c", "serve"], env={"A": "1"}, cwd=directory)
        process = self.reactor.last
        self.assertEqual(process.executable, SH)
        self.assertEqual(process.args, (SH, "-c", "serve"))
        self.assertEqual(process.env, {"A": "1"})
        self.assertEqual(process.path, directory)
        self.assertTrue(process.stdin_closed)
        self.assertEqual(service.pid, process.spawned_pid)
        self.assertEqual(self.successResultOf(service.when_started()), process.spawned_pid)
        self.assertEqual(
            self.logs.matching("Started etcd"), [f"Started etcd (pid {process.spawned_pid})"]
        )

    def test_no_environment_means_this_process_environment(self) -> None:
        """Without C{env} the child inherits this process's environment."""
        self.supervise()
        self.assertEqual(self.reactor.last.env, dict(os.environ))

    def test_systemds_notification_socket_is_not_inherited(self) -> None:
        """Only the unit's main process may tell systemd it is ready: a child gets no socket."""
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": "/run/systemd/notify", "A": "1"})
        self.supervise()
        env = self.reactor.last.env
        assert env is not None
        self.assertNotIn("NOTIFY_SOCKET", env)
        self.assertEqual(env["A"], "1")

    def test_a_bare_name_is_looked_up_in_path(self) -> None:
        """C{sh} is spawned as the absolute path C{PATH} finds it at."""
        self.supervise(["sh", "-c", "serve"])
        self.assertEqual(self.reactor.last.executable, os.path.abspath(str(shutil.which("sh"))))

    def test_output_is_logged_line_by_line(self) -> None:
        """Each line on stdout and stderr is one log event under the child's name."""
        self.supervise()
        process = self.reactor.last
        process.output(b"first li")
        process.output(b"ne\nsecond line\n\n")
        process.output(b"on stderr\r\n", fd=2)
        process.output(b"unfinished", fd=2)
        self.assertEqual(
            self.logs.matching("etcd: "),
            ["etcd: first line", "etcd: second line", "etcd: on stderr"],
        )
        process.exit(1)
        self.assertIn("etcd: unfinished", self.logs.lines)
        streams = [e.get("stream") for e in self.logs.events if "line" in e]
        self.assertEqual(streams, ["stdout", "stdout", "stderr", "stderr"])

    def test_on_line_hears_each_line_too(self) -> None:
        """A parent that acts on what its child says is told every line the log gets."""
        heard: list[str] = []
        self.supervise(on_line=heard.append)
        process = self.reactor.last
        process.output(b"one\ntw")
        process.output(b"o\n")
        process.output(b"three\n", fd=2)
        self.assertEqual(heard, ["one", "two", "three"])

    def test_long_lines_are_cut_and_never_buffered_whole(self) -> None:
        """A line longer than C{max_line} is logged cut, with the count of bytes dropped."""
        self.supervise(max_line=10)
        process = self.reactor.last
        process.output(b"0123456789abcdef\nshort\n")
        for _ in range(100):
            process.output(b"x" * 1000)
        process.output(b"\n")
        self.assertEqual(
            self.logs.matching("etcd: "),
            [
                "etcd: 0123456789 ... (6 more bytes)",
                "etcd: short",
                "etcd: xxxxxxxxxx ... (99990 more bytes)",
            ],
        )

    def test_an_exited_child_is_restarted_after_a_growing_back_off(self) -> None:
        """Each exit in a row doubles the wait before the restart, up to the maximum."""
        self.supervise()
        first = self.reactor.last
        first.exit(1)
        self.assertEqual(
            self.logs.matching("restarting"),
            [f"etcd (pid {first.spawned_pid}) exited with status 1; restarting in 1s"],
        )
        self.assertIsNone(self.reactor.last.pid)
        self.reactor.advance(0.999)
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(0.001)
        self.assertEqual(len(self.reactor.processes), 2)
        delays = []
        for _ in range(4):
            self.reactor.last.die("SEGV")
            (call,) = self.reactor.getDelayedCalls()
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [2.0, 4.0, 8.0, 8.0])
        self.assertEqual(len(self.reactor.processes), 6)
        self.assertEqual(len(self.logs.matching("was killed by SIGSEGV; restarting in 2s")), 1)

    def test_the_back_off_starts_over_after_a_stable_run(self) -> None:
        """A child that ran C{stable_after} seconds restarts after the first delay again."""
        self.supervise(stable_after=30.0)
        for _ in range(3):
            self.reactor.last.exit(1)
            self.reactor.advance(10)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(30)
        self.reactor.last.exit(0)
        (call,) = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime() - self.reactor.seconds(), 1.0)
        self.assertIn("exited with status 0; restarting in 1s", self.logs.lines[-1])

    def test_when_started_waits_for_the_restart(self) -> None:
        """While a restart is pending, L{when_started} fires with the next child's pid."""
        service = self.supervise()
        self.reactor.last.exit(2)
        self.assertIsNone(service.pid)
        started = service.when_started()
        self.assertNoResult(started)
        self.reactor.advance(1)
        self.assertEqual(self.successResultOf(started), self.reactor.last.spawned_pid)
        self.assertEqual(service.pid, self.reactor.last.spawned_pid)

    def test_a_child_that_exits_before_spawn_returns(self) -> None:
        """An exit Twisted reports from within C{spawnProcess} follows the start, then restarts."""
        self.reactor.spawn_exit = 3
        service = SupervisedProcess(self.reactor, "etcd", [SH], backoff=fixed(1.0))
        started = service.when_started()
        service.startService()
        pid = self.reactor.last.spawned_pid
        self.assertEqual(self.successResultOf(started), pid)
        self.assertIsNone(service.pid)
        self.assertEqual(
            self.logs.matching("restarting"),
            [f"etcd (pid {pid}) exited with status 3; restarting in 1s"],
        )
        self.reactor.spawn_exit = None
        self.reactor.advance(1)
        self.assertEqual(service.pid, self.reactor.last.spawned_pid)
        self.assertTrue(self.reactor.processes[0].ended)
        service.stopService()
        self.reactor.last.exit(0)
        self.assertNoDelayedCalls()

    def test_an_exit_does_not_wait_for_pipes_held_by_its_own_children(self) -> None:
        """The restart is scheduled at the exit; the pipes are closed after a grace."""
        self.supervise()
        process = self.reactor.last
        process.output(b"last wo", fd=2)
        process.exit(1, pipes_open=True)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        self.reactor.advance(PIPE_GRACE)
        self.assertTrue(process.ended)
        self.assertIn("etcd: last wo", self.logs.lines)
        self.reactor.advance(1 - PIPE_GRACE)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stop_sends_sigterm_and_fires_when_the_child_exits(self) -> None:
        """Stopping signals TERM, waits for the exit, and does not restart."""
        service = self.supervise()
        process = self.reactor.last
        stopped = service.stopService()
        self.assertEqual(process.signals, ["TERM"])
        self.assertNoResult(stopped)
        process.die("TERM")
        self.assertIsNone(self.successResultOf(stopped))
        self.assertIn(
            f"etcd (pid {process.spawned_pid}) stopped: was killed by SIGTERM", self.logs.lines
        )
        self.assertNoDelayedCalls()
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertIsNone(service.pid)

    def test_stop_escalates_to_sigkill_at_the_timeout(self) -> None:
        """A child still alive C{stop_timeout} seconds after SIGTERM gets SIGKILL."""
        service = self.supervise(stop_timeout=10.0)
        process = self.reactor.last
        stopped = service.stopService()
        self.reactor.advance(9.999)
        self.assertEqual(process.signals, ["TERM"])
        self.reactor.advance(0.001)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertIn(
            f"etcd (pid {process.spawned_pid}) did not exit within 10s of SIGTERM; sending SIGKILL",
            self.logs.lines,
        )
        self.assertNoResult(stopped)
        process.die("KILL")
        self.successResultOf(stopped)
        self.assertNoDelayedCalls()

    def test_stop_gives_up_on_a_child_that_outlives_sigkill(self) -> None:
        """The stop's Deferred fires C{kill_timeout} after SIGKILL even if the child lingers."""
        service = self.supervise(stop_timeout=10.0, kill_timeout=5.0)
        process = self.reactor.last
        stopped = service.stopService()
        self.reactor.advance(10)
        self.reactor.advance(5)
        self.successResultOf(stopped)
        self.assertEqual(len(self.logs.matching("no longer waiting for it")), 1)
        self.assertEqual(process.open_fds, set())
        self.assertNoDelayedCalls()
        # Its late exit changes nothing.
        process.exit(0)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertNoDelayedCalls()

    def test_stop_while_waiting_to_restart_cancels_the_restart(self) -> None:
        """Stopping between an exit and its restart fires at once and leaves no timer."""
        service = self.supervise()
        self.reactor.last.exit(1)
        started = service.when_started()
        stopped = service.stopService()
        self.successResultOf(stopped)
        self.failureResultOf(started, CancelledError)
        self.assertEqual(self.reactor.last.signals, [])
        self.assertNoDelayedCalls()
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_stop_before_start(self) -> None:
        """A service that never started stops at once."""
        service = SupervisedProcess(self.reactor, "etcd", [SH])
        self.successResultOf(service.stopService())
        self.assertEqual(self.reactor.processes, [])

    def test_start_again_while_stopping(self) -> None:
        """A start during a stop spawns a new child once the old one has exited."""
        service = self.supervise()
        old = self.reactor.last
        stopped = service.stopService()
        service.startService()
        started = service.when_started()
        self.assertEqual(len(self.reactor.processes), 1)
        old.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(self.successResultOf(started), self.reactor.last.spawned_pid)
        self.assertEqual(self.reactor.last.signals, [])

    def test_stop_from_a_started_callback(self) -> None:
        """A callback of L{when_started} may stop the service: the stop is queued, not refused."""
        service = SupervisedProcess(self.reactor, "etcd", [SH])
        stops: list[Deferred[None]] = []
        service.when_started().addCallback(lambda pid: stops.append(service.stopService()))
        service.startService()
        self.assertEqual(self.reactor.last.signals, ["TERM"])
        self.reactor.last.exit(0)
        self.successResultOf(stops[0])
        self.assertNoDelayedCalls()

    def test_a_missing_binary_is_one_clear_line_and_retried(self) -> None:
        """A missing executable fails L{when_started} and is logged in one line, then retried."""
        service = SupervisedProcess(
            self.reactor, "etcd", ["/nonexistent/etcd", "--data-dir", "x"], backoff=fixed(2.0)
        )
        started = service.when_started()
        service.startService()
        error = self.failureResultOf(started, ProcessStartError).value
        self.assertEqual(str(error), "cannot run /nonexistent/etcd: no such file")
        self.assertEqual(
            self.logs.matching("cannot run"),
            ["cannot run /nonexistent/etcd: no such file; retrying in 2s"],
        )
        self.assertEqual(self.reactor.processes, [])
        self.reactor.advance(2)
        self.assertEqual(len(self.logs.matching("cannot run")), 2)
        self.successResultOf(service.stopService())
        self.assertNoDelayedCalls()

    def test_a_name_not_in_path(self) -> None:
        """A bare name that C{PATH} does not find says which C{PATH} was searched."""
        self.supervise(["containerd"], env={"PATH": "/nonexistent"})
        self.assertIn(
            "cannot run containerd: not found in PATH (/nonexistent); retrying in 1s",
            self.logs.lines,
        )

    def test_a_missing_working_directory(self) -> None:
        """A working directory that does not exist is named."""
        self.supervise(cwd="/nonexistent/dir")
        self.assertIn(
            "cannot run /bin/sh: working directory /nonexistent/dir does not exist; retrying in 1s",
            self.logs.lines,
        )

    def test_a_spawn_refused_by_the_system_is_retried(self) -> None:
        """An OSError from C{spawnProcess} is logged with its reason and retried."""
        self.reactor.spawn_error = OSError(errno.EMFILE, "Too many open files")
        service = self.supervise()
        self.assertIn("cannot run /bin/sh: Too many open files; retrying in 1s", self.logs.lines)
        self.assertIsNone(service.pid)
        self.reactor.advance(1)
        self.assertEqual(service.pid, self.reactor.last.spawned_pid)

    def test_a_signal_to_a_child_already_gone_is_harmless(self) -> None:
        """A child reaped between its exit and the signal raises nothing."""
        service = self.supervise()
        process = self.reactor.last
        process.exited = True  # exited, its exit not yet delivered
        stopped = service.stopService()
        self.assertEqual(process.signals, [])
        process.exited = False
        process.exit(0)
        self.successResultOf(stopped)


class RunCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()

    def run_sh(self, **kwargs: Any) -> tuple[Deferred[CommandResult], FakeProcess]:
        kwargs.setdefault("timeout", 5.0)
        done = run_command(self.reactor, [SH, "-c", "cmd"], **kwargs)
        return done, self.reactor.last

    def assertNoDelayedCalls(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_output_of_a_successful_command(self) -> None:
        """Stdin is written and closed; stdout and stderr come back; no timer is left."""
        done, process = self.run_sh(stdin=b'{"cniVersion": "1.0.0"}', env={"CNI_COMMAND": "ADD"})
        self.assertEqual(bytes(process.stdin), b'{"cniVersion": "1.0.0"}')
        self.assertTrue(process.stdin_closed)
        self.assertEqual(process.env, {"CNI_COMMAND": "ADD"})
        process.output(b'{"ips": ')
        process.output(b"[]}")
        process.output(b"a warning\n", fd=2)
        self.assertNoResult(done)
        process.exit(0)
        self.assertEqual(
            self.successResultOf(done),
            CommandResult((SH, "-c", "cmd"), b'{"ips": []}', b"a warning\n"),
        )
        self.assertNoDelayedCalls()

    def test_a_non_zero_exit_names_the_command_status_and_stderr(self) -> None:
        """The error is one line: the command, its status, the end of its stderr."""
        done, process = self.run_sh()
        process.output(b"iptables-restore v1.8.9 (nf_tables): \nline 3 failed\n", fd=2)
        process.exit(2)
        error = self.failureResultOf(done, CommandFailed).value
        self.assertEqual(
            str(error),
            "/bin/sh -c cmd exited with status 2:"
            " iptables-restore v1.8.9 (nf_tables): / line 3 failed",
        )
        self.assertEqual((error.exit_code, error.signal, error.timed_out), (2, None, False))
        self.assertNoDelayedCalls()

    def test_an_error_on_stdout_when_stderr_is_empty(self) -> None:
        """A CNI plugin's JSON error on stdout is quoted when stderr says nothing."""
        done, process = self.run_sh()
        process.output(b'{"code": 7, "msg": "no IP ranges"}\n')
        process.exit(1)
        self.assertEqual(
            str(self.failureResultOf(done, CommandFailed).value),
            '/bin/sh -c cmd exited with status 1: {"code": 7, "msg": "no IP ranges"}',
        )

    def test_a_signal(self) -> None:
        """A command killed by a signal says which."""
        done, process = self.run_sh()
        process.die("SEGV")
        error = self.failureResultOf(done, CommandFailed).value
        self.assertEqual(str(error), "/bin/sh -c cmd was killed by SIGSEGV")
        self.assertEqual((error.exit_code, error.signal), (None, signal.SIGSEGV))

    def test_the_timeout_kills_the_command(self) -> None:
        """At the timeout the command gets SIGKILL and the result is a timeout error."""
        done, process = self.run_sh(timeout=5.0)
        self.reactor.advance(4.999)
        self.assertEqual(process.signals, [])
        self.reactor.advance(0.001)
        self.assertEqual(process.signals, ["KILL"])
        process.output(b"stuck\n", fd=2)
        process.die("KILL")
        error = self.failureResultOf(done, CommandFailed).value
        self.assertEqual(
            str(error), "/bin/sh -c cmd did not finish within 5s and was killed: stuck"
        )
        self.assertTrue(error.timed_out)
        self.assertEqual(error.signal, signal.SIGKILL)
        self.assertNoDelayedCalls()

    def test_a_command_that_outlives_sigkill_is_not_waited_for(self) -> None:
        """The result comes C{PIPE_GRACE} after SIGKILL even if the command never exits."""
        done, process = self.run_sh(timeout=5.0)
        self.reactor.advance(5.0)
        self.assertEqual(process.signals, ["KILL"])
        self.assertNoResult(done)
        self.reactor.advance(PIPE_GRACE)
        self.assertTrue(self.failureResultOf(done, CommandFailed).value.timed_out)
        self.assertNoDelayedCalls()

    def test_too_much_stdout_kills_the_command(self) -> None:
        """Stdout beyond C{max_output} is not kept: the command is killed and fails."""
        done, process = self.run_sh(max_output=10)
        process.output(b"0123456789")
        self.assertEqual(process.signals, [])
        process.output(b"a")
        self.assertEqual(process.signals, ["KILL"])
        process.die("KILL")
        error = self.failureResultOf(done, CommandFailed).value
        self.assertEqual(error.how, "wrote more than 10 bytes to stdout")
        self.assertEqual(error.stdout, b"0123456789")

    def test_too_much_stdout_after_the_exit(self) -> None:
        """Output past the bound from pipes still open after the exit closes them at once."""
        done, process = self.run_sh(max_output=4)
        process.exit(0, pipes_open=True)
        process.output(b"12345")
        error = self.failureResultOf(done, CommandFailed).value
        self.assertEqual(error.how, "wrote more than 4 bytes to stdout")
        self.assertEqual((error.exit_code, process.signals), (0, []))
        self.assertNoDelayedCalls()

    def test_stderr_keeps_its_end(self) -> None:
        """Only the last C{max_output} bytes of stderr are kept."""
        done, process = self.run_sh(max_output=10)
        process.output(b"0123456789", fd=2)
        process.output(b"abcde", fd=2)
        process.exit(0)
        self.assertEqual(self.successResultOf(done).stderr, b"56789abcde")

    def test_pipes_held_open_after_the_exit(self) -> None:
        """A command whose own child holds its pipes is done C{PIPE_GRACE} after it exits."""
        done, process = self.run_sh()
        process.output(b"ok")
        process.exit(0, pipes_open=True)
        self.assertNoResult(done)
        self.reactor.advance(PIPE_GRACE)
        self.assertEqual(self.successResultOf(done).stdout, b"ok")
        self.assertNoDelayedCalls()

    def test_a_command_that_exits_before_spawn_returns(self) -> None:
        """An exit reported from within C{spawnProcess} is the command's result."""
        self.reactor.spawn_exit = 0
        done, process = self.run_sh()
        process.closeStdout()
        process.closeStderr()
        self.assertEqual(self.successResultOf(done).stdout, b"")
        self.assertNoDelayedCalls()

    def test_a_missing_binary(self) -> None:
        """A missing executable is a L{ProcessStartError}, without a spawn or a timer."""
        done = run_command(self.reactor, ["/usr/sbin/no-such-iptables", "-L"], timeout=5)
        error = self.failureResultOf(done, ProcessStartError).value
        self.assertIsInstance(error, CommandFailed)
        self.assertEqual(str(error), "cannot run /usr/sbin/no-such-iptables: no such file")
        self.assertEqual(self.reactor.processes, [])
        self.assertNoDelayedCalls()

    def test_a_spawn_refused_by_the_system(self) -> None:
        """An OSError from C{spawnProcess} is a L{ProcessStartError} and leaves no timer."""
        self.reactor.spawn_error = OSError(errno.E2BIG, "Argument list too long")
        done = run_command(self.reactor, [SH], timeout=5)
        self.assertEqual(
            str(self.failureResultOf(done, ProcessStartError).value),
            "cannot run /bin/sh: Argument list too long",
        )
        self.assertNoDelayedCalls()

    def test_cancelling_kills_the_command(self) -> None:
        """Cancelling the result kills the command."""
        done, process = self.run_sh()
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertEqual(process.signals, ["KILL"])
        process.die("KILL")
        self.assertNoDelayedCalls()


class RealProcessTests(TestCase):
    """Real C{/bin/sh} children on the real reactor."""

    timeout = 20

    def setUp(self) -> None:
        self.logs = LogRecorder(self)

    async def test_a_crashed_child_is_restarted(self) -> None:
        """A child that exits is started again, with a new pid."""
        service = SupervisedProcess(
            reactor, "crasher", [SH, "-c", "echo up; exit 3"], backoff=fixed(0.05)
        )
        service.startService()
        self.addCleanup(service.stopService)
        first = await service.when_started()
        await self.logs.wait_for(f"crasher (pid {first}) exited with status 3; restarting")
        second = await service.when_started()
        self.assertNotEqual(first, second)
        await self.logs.wait_for("crasher: up", count=2)

    async def test_a_child_ignoring_sigterm_is_killed_at_the_timeout(self) -> None:
        """The stop sends SIGKILL after C{stop_timeout}, and its Deferred fires."""
        service = SupervisedProcess(
            reactor,
            "stubborn",
            [SH, "-c", "trap '' TERM; echo ready; exec sleep 30"],
            stop_timeout=0.5,
        )
        service.startService()
        pid = await service.when_started()
        await self.logs.wait_for("stubborn: ready")
        began = time.monotonic()
        await service.stopService()
        elapsed = time.monotonic() - began
        self.assertTrue(0.5 <= elapsed < 5, elapsed)
        self.assertEqual(len(self.logs.matching("sending SIGKILL")), 1)
        self.assertIn(f"stubborn (pid {pid}) stopped: was killed by SIGKILL", self.logs.lines)
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)

    async def test_run_command_returns_its_output(self) -> None:
        """stdin reaches the command; stdout and stderr come back."""
        result = await run_command(
            reactor, [SH, "-c", "cat; echo note >&2"], timeout=10, stdin=b"rules\n"
        )
        self.assertEqual((result.stdout, result.stderr), (b"rules\n", b"note\n"))

    async def test_run_command_fails_clearly_on_a_non_zero_exit(self) -> None:
        """A failing command's error names its status and its last words."""
        with self.assertRaises(CommandFailed) as raised:
            await run_command(reactor, [SH, "-c", "echo 'line 3 failed' >&2; exit 4"], timeout=10)
        self.assertEqual(raised.exception.exit_code, 4)
        self.assertTrue(str(raised.exception).endswith("exited with status 4: line 3 failed"))

    async def test_run_command_kills_at_the_timeout(self) -> None:
        """A command outliving its timeout is killed and fails as timed out."""
        began = time.monotonic()
        with self.assertRaises(CommandFailed) as raised:
            await run_command(reactor, [SH, "-c", "exec sleep 30"], timeout=0.3)
        self.assertTrue(raised.exception.timed_out)
        self.assertIn("did not finish within 0.3s and was killed", str(raised.exception))
        self.assertLess(time.monotonic() - began, 5)

    async def test_run_command_missing_binary(self) -> None:
        """A missing executable fails before anything is spawned."""
        with self.assertRaises(ProcessStartError):
            await run_command(reactor, ["no-such-command-k3stw"], timeout=5)
