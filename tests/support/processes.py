"""
An in-memory L{IReactorProcess} on a L{Clock}, for unit tests of code that
spawns processes (Twisted has no public one).

A spawned process is a L{FakeProcess} record: the test reads what was spawned
(executable, argv, environment, working directory), what was written to its
stdin and which signals it got, and drives it (output, an exit, a death by a
signal).  Nothing happens on its own: a signal is only recorded, and the test
decides whether the process dies of it.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterable, Mapping, Sequence
from typing import AnyStr

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IAddress)
class FakeProcessAddress:
    """The address of either end of a process's pipes (there is none)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@implementer(IProcessTransport)
class FakeProcess:
    """
    One spawned process, as its protocol sees it.

    :ivar args: its argv.
    :ivar env: its environment, as given to C{spawnProcess}.
    :ivar path: its working directory, as given.
    :ivar stdin: what was written to its stdin.
    :ivar signals: the signals sent to it, by name or number as given.
    :ivar open_fds: its pipes still open (0, 1, 2).
    :ivar exited: it has exited (L{exit} or L{die}).
    :ivar ended: its protocol got C{processEnded}.
    """

    def __init__(
        self,
        protocol: IProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        path: str | None,
        pid: int,
    ) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = tuple(args)
        self.env = dict(env) if env is not None else None
        self.path = path
        self.pid: int | None = pid
        #: The pid it was spawned with (Twisted clears C{pid} once it is reaped).
        self.spawned_pid = pid
        self.stdin = bytearray()
        self.signals: list[str | int] = []
        self.open_fds = {0, 1, 2}
        self.exited = False
        self.ended = False
        self._reason: Failure | None = None

    # What the test does.

    @property
    def stdin_closed(self) -> bool:
        return 0 not in self.open_fds

    def output(self, data: bytes, fd: int = 1) -> None:
        """The process writes C{data} on C{fd} (1: stdout, 2: stderr)."""
        assert fd in self.open_fds, f"fd {fd} is closed"
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int = 0, *, pipes_open: bool = False) -> None:
        """
        The process exits with status C{code}.

        :param pipes_open: its pipes stay open (a child of its own holds them)
            until the protocol's side closes them.
        """
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code, status=code << 8)
        self._end(Failure(reason), pipes_open)

    def die(self, signal_name: str = "KILL", *, pipes_open: bool = False) -> None:
        """The process is ended by a signal (C{"KILL"}, C{"TERM"}, ...)."""
        number = int(getattr(signal, f"SIG{signal_name}"))
        self._end(Failure(ProcessTerminated(signal=number, status=number)), pipes_open)

    # IProcessTransport

    def signalProcess(self, signalID: str | int) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def write(self, data: bytes) -> None:
        assert not self.stdin_closed, "write after closeStdin"
        self.stdin += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        assert childFD == 0, "only stdin is writable"
        self.write(data)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def closeChildFD(self, descriptor: int) -> None:
        if descriptor in self.open_fds:
            self.open_fds.remove(descriptor)
            self.protocol.childConnectionLost(descriptor)
            self._maybe_ended()

    def loseConnection(self) -> None:
        for descriptor in (0, 1, 2):
            self.closeChildFD(descriptor)

    def getPeer(self) -> IAddress:
        return FakeProcessAddress()

    def getHost(self) -> IAddress:
        return FakeProcessAddress()

    def _end(self, reason: Failure, pipes_open: bool) -> None:
        assert not self.exited, "the process has already exited"
        self.exited = True
        self.pid = None
        self._reason = reason
        self.protocol.processExited(reason)
        if not pipes_open:
            for descriptor in (1, 2, 0):
                self.closeChildFD(descriptor)
        self._maybe_ended()

    def _maybe_ended(self) -> None:
        # As Twisted's Process: processEnded once it has exited and every pipe is closed.
        if self.exited and not self.open_fds and not self.ended:
            self.ended = True
            assert self._reason is not None
            self.protocol.processEnded(self._reason)


@implementer(IReactorProcess)
class FakeProcessReactor(Clock):
    """
    A L{Clock} that also spawns L{FakeProcess}es.

    :ivar processes: every process spawned, in order.
    :ivar spawn_error: raised by the next C{spawnProcess} (then cleared).
    :ivar spawn_exit: the exit status of every process spawned from now on,
        reported from within C{spawnProcess} as Twisted reports a child that
        exited at once (None: they run until the test ends them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.spawn_error: Exception | None = None
        self.spawn_exit: int | None = None
        self._pids = itertools.count(4000)

    @property
    def last(self) -> FakeProcess:
        """The process spawned last."""
        assert self.processes, "nothing was spawned"
        return self.processes[-1]

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        if self.spawn_error is not None:
            error, self.spawn_error = self.spawn_error, None
            raise error
        environment = {_text(k): _text(v) for k, v in env.items()} if env is not None else None
        process = FakeProcess(
            processProtocol,
            _text(executable),
            [_text(arg) for arg in args],
            environment,
            _text(path) if path is not None else None,
            next(self._pids),
        )
        self.processes.append(process)
        processProtocol.makeConnection(process)
        if self.spawn_exit is not None:
            process.exit(self.spawn_exit, pipes_open=True)
        return process
