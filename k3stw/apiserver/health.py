"""
kube-apiserver's health endpoints: ``/healthz``, ``/livez`` and ``/readyz``,
each answering ``ok`` or listing its checks with ``?verbose``, skipping those
named by ``?exclude=``, and each check alone at ``/<endpoint>/<check>``.
The words are kube-apiserver's, so probes and scripts written for it work.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.web.iweb import IRequest

from k3stw.apiserver.status import StatusError

#: A check: C{None} when healthy, else why not (logged, never shown to clients).
Check = Callable[[], Coroutine[Any, Any, str | None]]

ENDPOINTS = ("healthz", "livez", "readyz")


@dataclass(frozen=True)
class HealthCheck:
    name: str
    check: Check
    #: The endpoints that run it (readiness checks are not liveness checks).
    endpoints: Sequence[str] = ENDPOINTS


async def _ok() -> str | None:
    return None


class Health:
    """The checks of one server and how the three endpoints report them."""

    def __init__(self, checks: Sequence[HealthCheck]) -> None:
        self.checks = [HealthCheck("ping", _ok), HealthCheck("log", _ok), *checks]

    async def answer(self, request: IRequest, endpoint: str, rest: list[str]) -> None:
        """Answer C{request} for C{/endpoint[/check]}; a check not known is a 404."""
        checks = [c for c in self.checks if endpoint in c.endpoints]
        if rest:
            name = "/".join(rest)
            chosen = [c for c in checks if c.name == name]
            if not chosen:
                raise StatusError(404, "the server could not find the requested resource")
            failed = await chosen[0].check()
            if failed:
                self._send(request, 500, f"internal server error: {failed}\n")
            else:
                self._send(request, 200, "ok")
            return
        excluded = {value.decode() for value in request.args.get(b"exclude", [])}
        lines = []
        healthy = True
        for check in checks:
            if check.name in excluded:
                excluded.discard(check.name)
                lines.append(f"[+]{check.name} excluded: ok")
                continue
            failed = await check.check()
            healthy = healthy and not failed
            if failed:
                lines.append(f"[-]{check.name} failed: reason withheld")
            else:
                lines.append(f"[+]{check.name} ok")
        lines += [
            f'warn: some health checks cannot be excluded: no matches for "{name}"'
            for name in sorted(excluded)
        ]
        verdict = f"{endpoint} check {'passed' if healthy else 'failed'}"
        verbose = b"verbose" in request.args
        if healthy and not verbose:
            self._send(request, 200, "ok")
        else:
            self._send(request, 200 if healthy else 500, "\n".join([*lines, verdict]) + "\n")

    @staticmethod
    def _send(request: IRequest, code: int, text: str) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.write(text.encode())
        request.finish()
