"""
The load balancer's server list: one health state machine per server, the
order in which to dial them, and the rules that keep every connection on one
active server.

This follows k3s's design (``pkg/agent/loadbalancer/servers.go``, PR #11329):
states sort by preference, a dial walks the list from the best state down, and
the ``--server`` address (the *default*) waits in ``STANDBY`` until it is the
only thing left. Pure logic: no transports, no reactor; a clock is passed in.

Two additions to k3s:

- a ``FAILED`` server is health-checked with an exponential backoff instead of
  every second, and within ``FAILED`` the servers whose backoff is over are
  dialed first;
- a server that becomes ``PREFERRED`` also closes the connections still held
  by ``FAILED`` and ``STANDBY`` servers, so that clients that fell back to the
  default server come back as soon as a better server passes its check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IReactorTime

from k3stw.logs import Logger
from k3stw.machinery.timing import Backoff


class ServerState(IntEnum):
    """A server's health, in increasing order of preference (k3s's values)."""

    INVALID = 0
    FAILED = 1
    STANDBY = 2
    UNCHECKED = 3
    RECOVERING = 4
    HEALTHY = 5
    PREFERRED = 6
    ACTIVE = 7


#: Reasons of transitions, in k3s's words where k3s has them.
SUCCESSFUL_DIAL = "successful dial"
FAILED_DIAL = "failed dial"
SUCCESSFUL_CHECK = "successful health check"
FAILED_CHECK = "failed health check"
ANOTHER_ACTIVE = "another server is active"
LISTED = "added to the server list"
UNLISTED = "removed from the server list"


class Connection(Protocol):
    """A proxied connection the list can close (both of its sides)."""

    def close(self) -> None:
        """Close the connection at once; idempotent."""


@dataclass(frozen=True)
class Transition:
    """One change of a server's state, and why."""

    address: str
    old: ServerState
    new: ServerState
    reason: str


#: Delays of 1, 2, 4, ... seconds (at most 15) before a failed server is checked again.
FAILED_SERVER_BACKOFF = Backoff(1.0, 15.0)


class _ServerInputs(Protocol):
    """
    What can happen to a server. The list classifies a passed health check
    (idle, in use, or settled after a minute in ``PREFERRED``) so that each
    input has exactly one target state.
    """

    def dial_succeeded(self) -> None:
        "A client connection to the server was established."

    def dial_failed(self) -> None:
        "A client connection to the server could not be established."

    def check_passed_idle(self) -> None:
        "The health check passed; the server has no open connections."

    def check_passed_in_use(self) -> None:
        "The health check passed; the server has open connections."

    def check_passed_settled(self) -> None:
        "The health check passed after more than a minute in PREFERRED."

    def check_failed(self) -> None:
        "The health check failed."

    def demote(self) -> None:
        "Another server is (or stays) the active one."

    def listed(self) -> None:
        "The default server appeared in the endpoint list."

    def unlisted(self) -> None:
        "The default server left the endpoint list."

    def removed(self) -> None:
        "The server left the endpoint list for good."


@dataclass
class _ServerCore:
    server: Server


def _to(state: ServerState, reason: str) -> Callable[[_ServerInputs, _ServerCore], None]:
    def enter(inputs: _ServerInputs, core: _ServerCore) -> None:
        core.server._entered(state, reason)

    enter.__name__ = f"enter_{state.name.lower()}"
    return enter


def _failed_again(inputs: _ServerInputs, core: _ServerCore) -> None:
    core.server._failed_again()


# The whole transition table. Inputs a state does not list raise NoTransition:
# the list never sends them, so one arriving is a bug worth a traceback.
_builder = TypeMachineBuilder(_ServerInputs, _ServerCore)
_unchecked = _builder.state("unchecked")
_invalid = _builder.state("invalid")
_failed = _builder.state("failed")
_standby = _builder.state("standby")
_recovering = _builder.state("recovering")
_healthy = _builder.state("healthy")
_preferred = _builder.state("preferred")
_active = _builder.state("active")

_S = ServerState
_I = _ServerInputs

_failed.upon(_I.dial_succeeded).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_DIAL))
_failed.upon(_I.dial_failed).loop()(_failed_again)
_failed.upon(_I.check_passed_idle).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_CHECK))
_failed.upon(_I.check_passed_in_use).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_CHECK))
_failed.upon(_I.check_failed).loop()(_failed_again)

_standby.upon(_I.dial_succeeded).loop().returns(None)
_standby.upon(_I.dial_failed).loop().returns(None)
_standby.upon(_I.check_passed_idle).loop().returns(None)
_standby.upon(_I.check_passed_in_use).loop().returns(None)
_standby.upon(_I.check_failed).loop().returns(None)
_standby.upon(_I.listed).to(_unchecked)(_to(_S.UNCHECKED, LISTED))

_unchecked.upon(_I.dial_succeeded).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_DIAL))
_unchecked.upon(_I.dial_failed).to(_failed)(_to(_S.FAILED, FAILED_DIAL))
_unchecked.upon(_I.check_passed_idle).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_CHECK))
_unchecked.upon(_I.check_passed_in_use).to(_recovering)(_to(_S.RECOVERING, SUCCESSFUL_CHECK))
_unchecked.upon(_I.check_failed).loop().returns(None)

_recovering.upon(_I.dial_succeeded).loop().returns(None)
_recovering.upon(_I.dial_failed).to(_failed)(_to(_S.FAILED, FAILED_DIAL))
_recovering.upon(_I.check_passed_idle).to(_preferred)(_to(_S.PREFERRED, SUCCESSFUL_CHECK))
_recovering.upon(_I.check_passed_in_use).to(_active)(_to(_S.ACTIVE, SUCCESSFUL_CHECK))
_recovering.upon(_I.check_failed).loop().returns(None)

_healthy.upon(_I.dial_succeeded).to(_active)(_to(_S.ACTIVE, SUCCESSFUL_DIAL))
_healthy.upon(_I.dial_failed).to(_failed)(_to(_S.FAILED, FAILED_DIAL))
_healthy.upon(_I.check_passed_idle).loop().returns(None)
_healthy.upon(_I.check_passed_in_use).loop().returns(None)
_healthy.upon(_I.check_failed).to(_failed)(_to(_S.FAILED, FAILED_CHECK))

_preferred.upon(_I.dial_succeeded).to(_active)(_to(_S.ACTIVE, SUCCESSFUL_DIAL))
_preferred.upon(_I.dial_failed).to(_failed)(_to(_S.FAILED, FAILED_DIAL))
_preferred.upon(_I.check_passed_idle).loop().returns(None)
_preferred.upon(_I.check_passed_in_use).loop().returns(None)
_preferred.upon(_I.check_passed_settled).to(_healthy)(_to(_S.HEALTHY, SUCCESSFUL_CHECK))
_preferred.upon(_I.check_failed).to(_failed)(_to(_S.FAILED, FAILED_CHECK))

_active.upon(_I.dial_succeeded).loop().returns(None)
_active.upon(_I.dial_failed).to(_failed)(_to(_S.FAILED, FAILED_DIAL))
_active.upon(_I.check_passed_idle).loop().returns(None)
_active.upon(_I.check_passed_in_use).loop().returns(None)
_active.upon(_I.check_failed).to(_failed)(_to(_S.FAILED, FAILED_CHECK))
_active.upon(_I.demote).to(_preferred)(_to(_S.PREFERRED, ANOTHER_ACTIVE))

for _state in (_failed, _unchecked, _recovering, _healthy, _preferred, _active):
    _state.upon(_I.unlisted).to(_standby)(_to(_S.STANDBY, UNLISTED))
for _state in (_failed, _standby, _unchecked, _recovering, _healthy, _preferred, _active):
    _state.upon(_I.removed).to(_invalid)(_to(_S.INVALID, UNLISTED))

_ServerMachine = _builder.build()
_INITIAL = {_S.UNCHECKED: _unchecked, _S.STANDBY: _standby}


class Server:
    """
    One upstream address, its health state and its open connections.

    Read its attributes; change it only through L{ServerList}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        address: str,
        state: ServerState,
        backoff: Callable[[int], float],
        is_default: bool = False,
    ) -> None:
        self.address = address
        self.is_default = is_default
        self.state = state
        #: Why the server is in its state.
        self.reason = "new"
        #: When (clock seconds) it entered its state.
        self.changed_at = clock.seconds()
        #: Consecutive failures while FAILED (0 otherwise).
        self.failures = 0
        #: While FAILED: no health check before this time.
        self.retry_at = 0.0
        self.connections: set[Connection] = set()
        self._clock = clock
        self._backoff = backoff
        self._transition: Transition | None = None
        self._inputs = _ServerMachine(_ServerCore(self), _INITIAL[state])

    def __repr__(self) -> str:
        return f"{self.address}@{self.state.name}{'*' if self.is_default else ''}"

    def in_backoff(self) -> bool:
        """Whether this failed server waits before its next health check."""
        return self.state is ServerState.FAILED and self._clock.seconds() < self.retry_at

    def _entered(self, state: ServerState, reason: str) -> None:
        self._transition = Transition(self.address, self.state, state, reason)
        self.state = state
        self.reason = reason
        self.changed_at = self._clock.seconds()
        self.failures = 0
        if state is ServerState.FAILED:
            self._failed_again()

    def _failed_again(self) -> None:
        self.failures += 1
        self.retry_at = self._clock.seconds() + self._backoff(self.failures)

    def _take_transition(self) -> Transition | None:
        transition, self._transition = self._transition, None
        return transition


def _sort_key(server: Server) -> tuple[int, int, int]:
    # Highest state first, then the busiest; among failed servers, those whose
    # backoff is over come before those still waiting.
    return (-server.state, 1 if server.in_backoff() else 0, -len(server.connections))


class ServerList:
    """
    The servers of one load balancer and their health.

    :param clock: the time source for backoffs and for the minute a server
        spends in ``PREFERRED`` before it counts as ``HEALTHY``.
    :param default: the ``host:port`` of ``--server`` (empty for none).
    :param name: the load balancer's name, in logs and metrics.
    :param backoff: the delay before re-checking a server after N consecutive failures.
    :param settle_after: seconds in ``PREFERRED`` before a passed check makes it ``HEALTHY``.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        default: str,
        name: str = "k3s-agent-load-balancer",
        backoff: Callable[[int], float] | None = None,
        settle_after: float = 60.0,
    ) -> None:
        self.name = name
        self._clock = clock
        self._backoff = backoff if backoff is not None else FAILED_SERVER_BACKOFF
        self._settle_after = settle_after
        self._servers: dict[str, Server] = {}
        self._listed: list[str] = []
        self._default = ""
        #: Every transition, as it happens (the service hooks metrics and logs here).
        self.observers: list[Callable[[Transition], None]] = []
        if default:
            self.set_default(default)

    # The address set

    @property
    def default(self) -> str:
        """The default server's address (``--server``)."""
        return self._default

    @property
    def addresses(self) -> list[str]:
        """The endpoint addresses, in the order given (a STANDBY default is hidden)."""
        return list(self._listed)

    def get(self, address: str) -> Server | None:
        """The server at ``address``, listed or the default, if any."""
        return self._servers.get(address)

    def servers(self) -> list[Server]:
        """Every server, in dial order."""
        return self.dial_order()

    def set_addresses(self, addresses: Iterable[str]) -> bool:
        """
        Make ``addresses`` the endpoint list.

        New addresses start ``UNCHECKED`` (a default in ``STANDBY`` is
        promoted to ``UNCHECKED``); removed ones have their connections
        closed, and the default, if removed, returns to ``STANDBY``.

        :return: whether the set of addresses changed.
        """
        wanted = list(dict.fromkeys(a for a in addresses if a))
        if set(wanted) == set(self._listed):
            return False
        for address in wanted:
            if address in self._listed:
                continue
            server = self._servers.get(address)
            self._log.info(
                "Adding server to load balancer {name}: {address}", name=self.name, address=address
            )
            if server is None:
                self._servers[address] = Server(
                    self._clock, address, ServerState.UNCHECKED, self._backoff
                )
            elif server.state is ServerState.STANDBY:
                self._feed(server, server._inputs.listed)
        for address in self._listed:
            if address in wanted:
                continue
            self._log.info(
                "Removing server from load balancer {name}: {address}",
                name=self.name,
                address=address,
            )
            server = self._servers[address]
            if server.is_default:
                self._feed(server, server._inputs.unlisted)
            else:
                self._drop(server)
        self._listed = wanted
        self._log.info(
            "Updated load balancer {name} server addresses -> {addresses} [default: {default}]",
            name=self.name,
            addresses=wanted,
            default=self._default,
        )
        return True

    def set_default(self, address: str) -> None:
        """
        Make ``address`` the default server; it waits in ``STANDBY`` unless listed.

        The previous default, if not in the endpoint list, is dropped.
        """
        if address == self._default:
            return
        previous = self._servers.get(self._default)
        if previous is not None:
            previous.is_default = False
            if self._default not in self._listed:
                self._drop(previous)
        self._default = address
        if not address:
            return
        server = self._servers.get(address)
        if server is None:
            server = Server(self._clock, address, ServerState.STANDBY, self._backoff)
            self._servers[address] = server
        server.is_default = True

    def _drop(self, server: Server) -> None:
        self._feed(server, server._inputs.removed)
        del self._servers[server.address]

    # Ordering and checks

    def dial_order(self) -> list[Server]:
        """A snapshot of the servers to try for a new connection, best first."""
        return sorted(self._servers.values(), key=_sort_key)

    def due_for_check(self) -> list[Server]:
        """The servers to health-check now (failed ones wait out their backoff)."""
        return [s for s in self._servers.values() if not s.in_backoff()]

    def is_current(self, server: Server) -> bool:
        """Whether ``server`` is still in this list (it was not removed meanwhile)."""
        return self._servers.get(server.address) is server

    # Events

    def record_dial(self, server: Server, succeeded: bool) -> None:
        """A dial to ``server`` succeeded or failed."""
        if not self.is_current(server):
            return
        inputs = server._inputs
        self._feed(server, inputs.dial_succeeded if succeeded else inputs.dial_failed)

    def record_check(self, server: Server, passed: bool) -> None:
        """A health check of ``server`` passed or failed."""
        if not self.is_current(server):
            return
        inputs = server._inputs
        if not passed:
            self._feed(server, inputs.check_failed)
        elif (
            server.state is ServerState.PREFERRED
            and self._clock.seconds() - server.changed_at > self._settle_after
        ):
            self._feed(server, inputs.check_passed_settled)
        elif server.connections:
            self._feed(server, inputs.check_passed_in_use)
        else:
            self._feed(server, inputs.check_passed_idle)

    def add_connection(self, server: Server, connection: Connection) -> bool:
        """
        Count ``connection`` as open to ``server``.

        :return: False if the server was removed meanwhile (close the connection).
        """
        if not self.is_current(server):
            return False
        server.connections.add(connection)
        return True

    def remove_connection(self, server: Server, connection: Connection) -> None:
        """Forget a closed connection."""
        server.connections.discard(connection)

    def close_connections(self, server: Server) -> None:
        """Close every connection open to ``server``."""
        if not server.connections:
            return
        self._log.info(
            "Closing {count} connections to load balancer server {server}",
            count=len(server.connections),
            server=repr(server),
        )
        for connection in list(server.connections):
            server.connections.discard(connection)
            connection.close()

    def close_all(self) -> None:
        """Close every connection (the load balancer stops)."""
        for server in list(self._servers.values()):
            self.close_connections(server)

    # Transitions and their effects on the other servers

    def _feed(self, server: Server, input_: Callable[[], None]) -> None:
        before = repr(server)
        input_()
        transition = server._take_transition()
        if transition is None:
            return
        self._log.info(
            "Server {before}->{state} from {reason}",
            before=before,
            state=transition.new.name,
            reason=transition.reason,
        )
        for observer in self.observers:
            observer(transition)
        self._after(server, transition)

    def _after(self, server: Server, transition: Transition) -> None:
        new, old = transition.new, transition.old
        if new in (ServerState.INVALID, ServerState.STANDBY) or (
            new is ServerState.FAILED
            and old in (ServerState.HEALTHY, ServerState.PREFERRED, ServerState.ACTIVE)
        ):
            self.close_connections(server)
        elif new is ServerState.PREFERRED:
            if transition.reason == ANOTHER_ACTIVE:
                self.close_connections(server)
            self._close_others(server, (ServerState.FAILED, ServerState.STANDBY))
        elif new is ServerState.ACTIVE:
            self._close_others(
                server,
                (
                    ServerState.FAILED,
                    ServerState.STANDBY,
                    ServerState.RECOVERING,
                    ServerState.HEALTHY,
                ),
            )
            # All connections go to one active server: the busier one stays.
            for other in list(self._servers.values()):
                if other is server or other.state is not ServerState.ACTIVE:
                    continue
                if len(other.connections) > len(server.connections):
                    self._feed(server, server._inputs.demote)
                    return
                self._feed(other, other._inputs.demote)

    def _close_others(self, server: Server, states: tuple[ServerState, ...]) -> None:
        for other in list(self._servers.values()):
            if other is not server and other.state in states:
                self.close_connections(other)

    # Visibility

    def status(self) -> list[dict[str, object]]:
        """Each server's address, state, open connections and last transition, in dial order."""
        return [
            {
                "address": s.address,
                "state": s.state.name,
                "default": s.is_default,
                "connections": len(s.connections),
                "reason": s.reason,
                "since": s.changed_at,
                "failures": s.failures,
            }
            for s in self.dial_order()
        ]
