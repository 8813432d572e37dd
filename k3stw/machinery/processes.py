"""
The child processes k3stw runs, all spawned through an injected
L{IReactorProcess}: L{SupervisedProcess}, a service that keeps a daemon
(etcd, containerd) running, and L{run_command} for one-shot commands (CNI
plugins, C{iptables-restore}).

A child's end is taken from C{processExited}, not C{processEnded}: a daemon's
own children (containerd's shims) may hold its output pipes open long after it
is gone, and a restart or a stop must not wait for them.  The pipes get a short
grace to deliver the last words of the child (a crash's message comes last),
then are closed from this side.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from automat import TypeMachineBuilder
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from k3stw.logs import Logger
from k3stw.machinery.timing import Backoff

__all__ = [
    "CommandFailed",
    "CommandResult",
    "ProcessStartError",
    "SupervisedProcess",
    "how_it_ended",
    "run_command",
]

_log = Logger()

#: Seconds the pipes of a child that has exited may still deliver output.
PIPE_GRACE = 1.0
#: The longest output line logged; the rest of a longer line is counted, not kept.
MAX_LINE = 8192
#: The most output L{run_command} keeps of each stream.
MAX_OUTPUT = 1024 * 1024
#: How much of a failed command's output its error message quotes.
_TAIL = 400
_MAX_COMMAND = 160


class CommandFailed(Exception):
    """
    A command did not succeed.  C{str()} is one line: the command, how it
    ended, and the end of what it said (its stderr, or its stdout when stderr
    is empty: CNI plugins write their errors there as JSON).

    :ivar argv: the command.
    :ivar how: how it ended (C{exited with status 2}).
    :ivar exit_code: its exit status (None when a signal ended it or it never ran).
    :ivar signal: the number of the signal that ended it, or None.
    :ivar timed_out: it outlived its timeout and was killed.
    :ivar stdout: what it wrote on stdout (at most C{max_output} bytes).
    :ivar stderr: the end of what it wrote on stderr.
    """

    def __init__(
        self,
        argv: Sequence[str],
        how: str,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        timed_out: bool = False,
        stdout: bytes = b"",
        stderr: bytes = b"",
    ) -> None:
        super().__init__(argv, how)
        self.argv = tuple(argv)
        self.how = how
        self.exit_code = exit_code
        self.signal = signal
        self.timed_out = timed_out
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        said = _tail(self.stderr) or _tail(self.stdout)
        message = f"{_command_line(self.argv)} {self.how}"
        return f"{message}: {said}" if said else message


class ProcessStartError(CommandFailed):
    """
    A child could not be started: its executable is missing or not
    executable, its working directory is missing, or the system refused.
    C{str()} is one line a user can act on.

    :ivar problem: what is wrong (C{not found in PATH (/usr/sbin:/usr/bin)}).
    """

    def __init__(self, argv: Sequence[str], problem: str) -> None:
        super().__init__(argv, f"could not be started: {problem}")
        self.problem = problem

    def __str__(self) -> str:
        return f"cannot run {self.argv[0] if self.argv else '(nothing)'}: {self.problem}"


@dataclass(frozen=True)
class CommandResult:
    """
    What a command that exited with status 0 wrote.

    :ivar argv: the command.
    :ivar stdout: all of its stdout.
    :ivar stderr: the end of its stderr (at most C{max_output} bytes).
    """

    argv: tuple[str, ...]
    stdout: bytes
    stderr: bytes


def run_command(
    reactor: IReactorProcess,
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    max_output: int = MAX_OUTPUT,
) -> Deferred[CommandResult]:
    """
    Run a command to its end and collect its output.

    :param reactor: spawns the command and times it (an L{IReactorTime} too).
    :param argv: the command; a name without C{/} is looked up in C{PATH}.
    :param timeout: seconds after which the command is killed (SIGKILL).
    :param env: its whole environment (None: this process's).
    :param stdin: bytes it reads on stdin (None: an empty stdin).
    :param max_output: the most stdout kept; a command that writes more is
        killed and fails.  The last C{max_output} bytes of stderr are kept.
    :return: a Deferred firing with the L{CommandResult} of a command that
        exited with status 0, or failing with L{CommandFailed} (a non-zero
        status, a signal, the timeout, too much output) or its subclass
        L{ProcessStartError}.  Cancelling it kills the command.
    """
    clock = IReactorTime(reactor)
    try:
        executable = _executable(argv, env, None)
    except ProcessStartError as e:
        return fail(e)
    command = _Command(clock, tuple(argv), timeout, stdin, max_output)
    _log.debug("Running {command}", command=_command_line(argv))
    try:
        reactor.spawnProcess(command, executable, list(argv), env=_environment(env))
    except OSError as e:
        command.not_started()
        return fail(ProcessStartError(argv, e.strerror or str(e)))
    return command.done


class SupervisedProcess(Service):
    """
    Keep a long-running child process running while the service runs.

    The child's stdout and stderr are logged line by line under the service's
    name.  When it exits (or cannot be started) while the service runs, that is
    logged and it is started again after C{backoff}; the wait grows with each
    failure in a row and starts over once a child has run C{stable_after}
    seconds.  C{stopService} sends SIGTERM, then SIGKILL after
    C{stop_timeout} seconds, and fires once the child has exited (or, should
    it outlive SIGKILL by C{kill_timeout} seconds, gives up on it).

    :param reactor: spawns the child and times it (an L{IReactorTime} too).
    :param name: what the logs call the child (C{etcd}).
    :param argv: its command line; a name without C{/} is looked up in C{PATH}.
    :param env: its whole environment (None: this process's).
    :param cwd: its working directory (None: this process's).
    :param backoff: the wait before each restart (default: 1s, doubling up to 30s).
    :param stable_after: seconds after which a run no longer counts as a
        failure in a row.
    :param stop_timeout: seconds between SIGTERM and SIGKILL.
    :param kill_timeout: seconds to wait after SIGKILL before giving up.
    :param max_line: the longest output line logged (in bytes).
    :param output: a file the child's stdout and stderr are appended to,
        instead of the log (containerd's own log file, as k3s keeps it).
    :param on_line: told each line the child writes (when it goes to the
        log), for a parent that acts on what its child says.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        backoff: Backoff | None = None,
        stable_after: float = 30.0,
        stop_timeout: float = 10.0,
        kill_timeout: float = 5.0,
        max_line: int = MAX_LINE,
        output: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("a supervised process needs a command line")
        self.setName(name)
        self._label = name
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.argv = tuple(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.backoff = backoff or Backoff(1.0, 30.0)
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.kill_timeout = kill_timeout
        self.max_line = max_line
        self.output = output
        self.on_line = on_line
        #: Exits (or failed starts) in a row, for the back-off.
        self.failures = 0
        #: How the latest run ended while it should have run: a
        #: L{ProcessStartError} or the exit (L{how_it_ended} says it in words).
        self.last_failure: Failure | None = None
        # The latest child spawned, alive or not: the machine's states say what
        # we intend, this says what runs.
        self._child: _Child | None = None
        self._start_waiters: list[Deferred[int]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._machine = _Machine(_Core(self))

    @property
    def pid(self) -> int | None:
        """The process id of the running child (None while none runs)."""
        child = self._child
        return child.pid if child is not None and child.alive else None

    def when_started(self) -> Deferred[int]:
        """
        The pid of the running child: at once if one runs, else once the next
        one has been spawned.

        The Deferred fails with L{ProcessStartError} if that start fails (the
        service goes on retrying), and with L{CancelledError} if the service
        is stopped first.
        """
        child = self._child
        if self.running and child is not None and child.alive and not child.terminating:
            assert child.pid is not None
            return succeed(child.pid)
        waiter: Deferred[int] = Deferred(canceller=self._start_waiters.remove)
        self._start_waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._machine.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop the child: SIGTERM, then SIGKILL after C{stop_timeout}.

        :return: fires once it has exited (at once if none runs).
        """
        super().stopService()
        stopped: Deferred[None] = Deferred()
        self._stop_waiters.append(stopped)
        self._machine.stop()
        return stopped

    # What the state machine's outputs call.

    def _spawn(self, inputs: _Lifecycle) -> None:
        self._child = None
        try:
            executable = _executable(self.argv, self.env, self.cwd)
            child = _Child(self._label, self.clock, self.max_line, self.on_line)
            self._spawn_child(child, executable)
        except ProcessStartError as e:
            inputs._ended(Failure(e), 0.0)
        except OSError as e:
            inputs._ended(Failure(ProcessStartError(self.argv, e.strerror or str(e))), 0.0)
        except Exception as e:
            # Whatever went wrong, the machine must hear how the attempt ended.
            self._log.failure("Cannot spawn {name}", name=self.name)
            inputs._ended(Failure(ProcessStartError(self.argv, str(e) or repr(e))), 0.0)
        else:
            self._child = child
            inputs._spawned()
            # Only now: Twisted reports a child that exited at once from
            # within spawnProcess, and its end must follow its start.
            child.attach(inputs._ended)

    def _spawn_child(self, child: _Child, executable: str) -> None:
        env, argv = _environment(self.env), list(self.argv)
        if self.output is None:
            self.reactor.spawnProcess(child, executable, argv, env=env, path=self.cwd)
            return
        fd = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self.reactor.spawnProcess(
                child, executable, argv, env=env, path=self.cwd, childFDs={0: "w", 1: fd, 2: fd}
            )
        finally:
            os.close(fd)

    def _started(self) -> None:
        assert self._child is not None and self._child.pid is not None
        pid = self._child.pid
        self._log.info("Started {name} (pid {pid})", name=self.name, pid=pid)
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(pid)

    def _schedule_restart(
        self, inputs: _Lifecycle, reason: Failure, ran_for: float
    ) -> IDelayedCall:
        if ran_for >= self.stable_after:
            self.failures = 0
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        self.last_failure = reason
        if reason.check(ProcessStartError):
            self._log.error(
                "{error}; retrying in {delay:.3g}s", error=str(reason.value), delay=delay
            )
        else:
            self._log.warn(
                "{name} (pid {pid}) {how}; restarting in {delay:.3g}s",
                name=self.name,
                pid=self._child.pid if self._child is not None else None,
                how=how_it_ended(reason),
                delay=delay,
            )
        return self.clock.callLater(delay, inputs._retry)

    def _fail_start_waiters(self, reason: Failure) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.errback(reason)

    def _terminate(self, inputs: _Lifecycle) -> None:
        self._fail_start_waiters(Failure(CancelledError()))
        child = self._child
        assert child is not None
        self._log.info("Stopping {name} (pid {pid})", name=self.name, pid=child.pid)
        child.terminate(self.stop_timeout, self.kill_timeout, inputs._abandoned)

    def _stopped(self, child: _Child | None, reason: Failure | None) -> None:
        if reason is not None and child is not None:
            self._log.info(
                "{name} (pid {pid}) stopped: {how}",
                name=self.name,
                pid=child.pid,
                how=how_it_ended(reason),
            )
        self.failures = 0
        waiters, self._stop_waiters = self._stop_waiters, []

        def fire(_: object) -> None:
            for waiter in waiters:
                waiter.callback(None)

        # The last child's pipes close within PIPE_GRACE of its exit: once
        # stopped, nothing of ours is left pending on the reactor.
        (child.when_closed() if child is not None else succeed(None)).addCallback(fire)


class _Lifecycle(Protocol):
    """
    What happens to a supervised process.  Every input returns None, so an
    input fed while another is being handled (from a Deferred fired by an
    output) is queued by Automat, never refused.
    """

    def start(self) -> None:
        "The service started."

    def stop(self) -> None:
        "The service stopped."

    def _spawned(self) -> None:
        "The child was spawned."

    def _ended(self, reason: Failure, ran_for: float) -> None:
        "The child exited after C{ran_for} seconds (or could not be spawned)."

    def _retry(self) -> None:
        "The wait before a restart is over."

    def _abandoned(self) -> None:
        "The child outlived SIGKILL; it is no longer waited for."


@dataclass
class _Core:
    service: SupervisedProcess


def _spawn(inputs: _Lifecycle, core: _Core) -> None:
    core.service._spawn(inputs)


def _wait_to_retry(
    inputs: _Lifecycle, core: _Core, reason: Failure, ran_for: float
) -> IDelayedCall:
    return core.service._schedule_restart(inputs, reason, ran_for)


# The whole transition table.  "starting" lasts while a spawn is attempted:
# the spawn's own outcome (_spawned or _ended) is the only input that can
# arrive there, since Automat queues anything fed during a transition.
_builder = TypeMachineBuilder(_Lifecycle, _Core)
_idle = _builder.state("idle")
_starting = _builder.state("starting")
_running = _builder.state("running")
_waiting = _builder.state("waiting", _wait_to_retry)
_stopping = _builder.state("stopping")
_restarting = _builder.state("restarting")

_idle.upon(_Lifecycle.start).to(_starting)(_spawn)


@_waiting.upon(_Lifecycle._retry).to(_starting)
def _spawn_again(inputs: _Lifecycle, core: _Core, retry: IDelayedCall) -> None:
    core.service._spawn(inputs)


@_starting.upon(_Lifecycle._spawned).to(_running)
def _on_spawned(inputs: _Lifecycle, core: _Core) -> None:
    core.service._started()


@_starting.upon(_Lifecycle._ended).to(_waiting)
def _on_spawn_failed(inputs: _Lifecycle, core: _Core, reason: Failure, ran_for: float) -> None:
    core.service._fail_start_waiters(reason)


_running.upon(_Lifecycle._ended).to(_waiting).returns(None)


@_running.upon(_Lifecycle.stop).to(_stopping)
def _on_stop_running(inputs: _Lifecycle, core: _Core) -> None:
    core.service._terminate(inputs)


@_stopping.upon(_Lifecycle.stop).loop()
@_restarting.upon(_Lifecycle.stop).to(_stopping)
def _on_stop_again(inputs: _Lifecycle, core: _Core) -> None:
    core.service._fail_start_waiters(Failure(CancelledError()))


@_idle.upon(_Lifecycle.stop).loop()
def _on_stop_idle(inputs: _Lifecycle, core: _Core) -> None:
    core.service._fail_start_waiters(Failure(CancelledError()))
    core.service._stopped(core.service._child, None)


@_waiting.upon(_Lifecycle.stop).to(_idle)
def _on_stop_waiting(inputs: _Lifecycle, core: _Core, retry: IDelayedCall) -> None:
    retry.cancel()
    core.service._fail_start_waiters(Failure(CancelledError()))
    core.service._stopped(core.service._child, None)


@_stopping.upon(_Lifecycle._ended).to(_idle)
def _on_stopped(inputs: _Lifecycle, core: _Core, reason: Failure, ran_for: float) -> None:
    core.service._stopped(core.service._child, reason)


@_stopping.upon(_Lifecycle._abandoned).to(_idle)
def _on_abandoned(inputs: _Lifecycle, core: _Core) -> None:
    core.service._stopped(core.service._child, None)


_stopping.upon(_Lifecycle.start).to(_restarting).returns(None)


@_restarting.upon(_Lifecycle._ended).to(_starting)
def _on_stopped_restart(inputs: _Lifecycle, core: _Core, reason: Failure, ran_for: float) -> None:
    # Spawn before firing the stop's Deferreds: an input their callbacks feed
    # must queue behind the spawn's outcome, the only one "starting" accepts.
    old = core.service._child
    core.service._spawn(inputs)
    core.service._stopped(old, reason)


@_restarting.upon(_Lifecycle._abandoned).to(_starting)
def _on_abandoned_restart(inputs: _Lifecycle, core: _Core) -> None:
    old = core.service._child
    core.service._spawn(inputs)
    core.service._stopped(old, None)


_running.upon(_Lifecycle.start).loop().returns(None)
_waiting.upon(_Lifecycle.start).loop().returns(None)
_restarting.upon(_Lifecycle.start).loop().returns(None)

_Machine = _builder.build()


class _Child(ProcessProtocol):
    """One run of a supervised process: its output, its end, its stop."""

    _log = Logger()

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        max_line: int,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.on_line = on_line
        self.clock = clock
        self.pid: int | None = None
        self.alive = False
        self.terminating = False
        self.started = clock.seconds()
        # Who hears of the exit (set by attach, dropped once told or given up
        # on), and the exit until then.
        self._report: Callable[[Failure, float], None] | None = None
        self._exit: tuple[Failure, float] | None = None
        self._ended = False
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []
        # The one pending step: SIGKILL, giving up, or closing the pipes.
        self._next: IDelayedCall | None = None
        self._lines = {
            1: _Lines(max_line, partial(self._line, "stdout")),
            2: _Lines(max_line, partial(self._line, "stderr")),
        }

    @property
    def _process(self) -> IProcessTransport:
        assert self.transport is not None
        return self.transport

    def connectionMade(self) -> None:
        # Twisted forgets the pid once the child is reaped; the logs need it after.
        self.pid = self._process.pid
        self.alive = True
        self._process.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            lines.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            lines.flush()

    def attach(self, report: Callable[[Failure, float], None]) -> None:
        """Tell C{report} of the exit (at once if it has already happened)."""
        self._report = report
        self._tell()

    def processExited(self, reason: Failure) -> None:
        self.alive = False
        if not self._ended:
            self._then(PIPE_GRACE, self._close_pipes)
        self._exit = (reason, self.clock.seconds() - self.started)
        self._tell()

    def _tell(self) -> None:
        if self._report is not None and self._exit is not None:
            report, self._report = self._report, None
            report(*self._exit)

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        self._then(None, None)
        for lines in self._lines.values():
            lines.flush()
        self._done()

    def when_closed(self) -> Deferred[None]:
        """Fires once the child has exited and its pipes are closed, or was given up on."""
        if self._closed:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._close_waiters.append(closed)
        return closed

    def _done(self) -> None:
        if not self._closed:
            self._closed = True
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def terminate(
        self, stop_timeout: float, kill_timeout: float, abandoned: Callable[[], None]
    ) -> None:
        """SIGTERM now, SIGKILL after C{stop_timeout}, give up C{kill_timeout} later."""
        self.terminating = True
        self._signal("TERM")
        self._then(stop_timeout, partial(self._kill, stop_timeout, kill_timeout, abandoned))

    def _kill(
        self, stop_timeout: float, kill_timeout: float, abandoned: Callable[[], None]
    ) -> None:
        self._log.warn(
            "{name} (pid {pid}) did not exit within {timeout:.3g}s of SIGTERM; sending SIGKILL",
            name=self.name,
            pid=self.pid,
            timeout=stop_timeout,
        )
        self._signal("KILL")
        self._then(kill_timeout, partial(self._abandon, kill_timeout, abandoned))

    def _abandon(self, kill_timeout: float, abandoned: Callable[[], None]) -> None:
        self._log.error(
            "{name} (pid {pid}) did not exit within {timeout:.3g}s of SIGKILL;"
            " no longer waiting for it",
            name=self.name,
            pid=self.pid,
            timeout=kill_timeout,
        )
        self._report = None
        self._close_pipes()
        self._done()
        abandoned()

    def _signal(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass  # its exit is on its way to processExited
        except OSError as e:
            self._log.warn(
                "Cannot send SIG{signal} to {name} (pid {pid}): {error}",
                signal=name,
                name=self.name,
                pid=self.pid,
                error=e.strerror or str(e),
            )

    def _close_pipes(self) -> None:
        self._next = None
        self._process.loseConnection()

    def _then(self, delay: float | None, step: Callable[[], None] | None) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if delay is not None and step is not None:
            self._next = self.clock.callLater(delay, step)

    def _line(self, stream: str, line: str) -> None:
        self._log.info("{name}: {line}", name=self.name, line=line, stream=stream, pid=self.pid)
        if self.on_line is not None:
            self.on_line(line)


class _Command(ProcessProtocol):
    """One run of L{run_command}: its input, its bounded output, its deadline."""

    def __init__(
        self,
        clock: IReactorTime,
        argv: tuple[str, ...],
        timeout: float,
        stdin: bytes | None,
        max_output: int,
    ) -> None:
        self.clock = clock
        self.argv = argv
        self.timeout = timeout
        self.stdin = stdin
        self.max_output = max_output
        self.done: Deferred[CommandResult] = Deferred(canceller=self._cancelled)
        self._stdout = bytearray()
        self._stderr = bytearray()
        # Why the command was killed, if it was: it decides the error.
        self._killed_because: str | None = None
        self._timed_out = False
        self._exit: Failure | None = None
        self._next: IDelayedCall | None = clock.callLater(timeout, self._time_out)

    @property
    def _process(self) -> IProcessTransport:
        assert self.transport is not None
        return self.transport

    def not_started(self) -> None:
        self._then(None, None)

    def connectionMade(self) -> None:
        if self.stdin:
            self._process.write(self.stdin)
        self._process.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1 and self._killed_because is None:
            room = self.max_output - len(self._stdout)
            self._stdout += data[:room]
            if len(data) > room:
                self._kill(f"wrote more than {self.max_output} bytes to stdout")
        elif childFD == 2:
            self._stderr += data
            del self._stderr[: -self.max_output]

    def processExited(self, reason: Failure) -> None:
        self._exit = reason
        self._then(PIPE_GRACE, self._process.loseConnection)

    def processEnded(self, reason: Failure) -> None:
        self._then(None, None)
        self._finish(self._exit or reason)

    def _time_out(self) -> None:
        self._timed_out = True
        self._kill(f"did not finish within {self.timeout:g}s and was killed")

    def _kill(self, because: str) -> None:
        self._killed_because = because
        if self._exit is not None:
            # It has exited; only its pipes (held by a child of its own) are left.
            self._then(None, None)
            self._process.loseConnection()
            return
        with suppress(ProcessExitedAlready):
            self._process.signalProcess("KILL")
        # A command that outlives SIGKILL (stuck in the kernel) is not waited for.
        self._then(PIPE_GRACE, partial(self._finish, None))

    def _cancelled(self, done: Deferred[CommandResult]) -> None:
        if self._exit is None:
            self._kill("was cancelled")

    def _finish(self, reason: Failure | None) -> None:
        if self.done.called:
            return
        self._then(None, None)
        stdout, stderr = bytes(self._stdout), bytes(self._stderr)
        exit_code, signal_number = _exit_status(reason) if reason is not None else (None, None)
        if self._killed_because is None and exit_code == 0:
            self.done.callback(CommandResult(self.argv, stdout, stderr))
            return
        how = self._killed_because or _describe(exit_code, signal_number)
        self.done.errback(
            CommandFailed(
                self.argv,
                how,
                exit_code=exit_code,
                signal=signal_number,
                timed_out=self._timed_out,
                stdout=stdout,
                stderr=stderr,
            )
        )

    def _then(self, delay: float | None, step: Callable[[], object] | None) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if delay is not None and step is not None:
            self._next = self.clock.callLater(delay, step)


class _Lines:
    """
    Split a byte stream into text lines, none longer than C{max_line} bytes:
    the rest of a longer line is dropped and counted, so that a child writing
    without newlines never grows a buffer.
    """

    def __init__(self, max_line: int, emit: Callable[[str], None]) -> None:
        self.max_line = max_line
        self.emit = emit
        self._buffer = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._add(data[start:end])
            self.flush()
            start = end + 1
        self._add(data[start:])

    def flush(self) -> None:
        """Emit what is held as a line (unless it is blank)."""
        text = self._buffer.decode("utf-8", "replace").rstrip()
        if self._dropped:
            text += f" ... ({self._dropped} more bytes)"
        self._buffer.clear()
        self._dropped = 0
        if text:
            self.emit(text)

    def _add(self, chunk: bytes) -> None:
        room = self.max_line - len(self._buffer)
        self._buffer += chunk[:room]
        self._dropped += max(len(chunk) - room, 0)


def _executable(argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None) -> str:
    """
    The absolute path of C{argv[0]}, checked here so that a missing binary is
    one clear error whichever way Twisted spawns (a failed C{exec} after a
    fork would only be an exit status 1 and a traceback on stderr).
    """
    if not argv:
        raise ValueError("empty command line")
    program = argv[0]
    if cwd is not None and not os.path.isdir(cwd):
        raise ProcessStartError(argv, f"working directory {cwd} does not exist")
    if "/" in program:
        path = os.path.abspath(os.path.join(cwd or os.curdir, program))
        if not os.path.exists(path):
            raise ProcessStartError(argv, "no such file")
    else:
        search = (env or {}).get("PATH") or os.environ.get("PATH", os.defpath)
        found = shutil.which(program, path=search)
        if found is None:
            raise ProcessStartError(argv, f"not found in PATH ({search})")
        path = os.path.abspath(found)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise ProcessStartError(argv, f"{path} is not an executable file")
    return path


#: What a child never inherits: systemd's socket for this process's readiness
#: (systemd refuses any other sender, and logs each try) and its watchdog's settings.
_OWN_TO_THIS_PROCESS = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    # Twisted's spawnProcess reads None differently on its two spawn paths: say it.
    if env is not None:
        return dict(env)
    return {name: value for name, value in os.environ.items() if name not in _OWN_TO_THIS_PROCESS}


def _exit_status(reason: Failure) -> tuple[int | None, int | None]:
    """The exit status and the signal of a process's end."""
    value = reason.value
    if isinstance(value, ProcessDone | ProcessTerminated):
        return value.exitCode, value.signal
    return None, None


def _describe(exit_code: int | None, signal_number: int | None) -> str:
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"was killed by {name}"
    if exit_code is not None:
        return f"exited with status {exit_code}"
    return "ended"


def how_it_ended(reason: Failure) -> str:
    """How a child ended, in words (C{exited with status 1}, C{was killed by SIGKILL})."""
    if reason.check(ProcessDone, ProcessTerminated):
        return _describe(*_exit_status(reason))
    return str(reason.value)


def _command_line(argv: Sequence[str]) -> str:
    line = shlex.join(argv)
    return line if len(line) <= _MAX_COMMAND else line[: _MAX_COMMAND - 3] + "..."


def _tail(output: bytes) -> str:
    """The end of a command's output, as one line."""
    text = output[-_TAIL * 4 :].decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " / ".join(lines)
    return joined if len(joined) <= _TAIL else "..." + joined[-(_TAIL - 3) :]
