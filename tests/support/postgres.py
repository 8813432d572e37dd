"""
Real PostgreSQL servers for tests: C{initdb} + C{pg_ctl} in a temporary
directory, listening on one loopback address and a free port.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the C{postgres} user (C{runuser}).  Start-up problems raise
L{PostgresStartError} with the server log's tail: a test that needs the
server errors, it never skips.  Servers are stopped by their own PID (via
C{pg_ctl stop}, which signals the postmaster named in its pid file).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

from tests.support.net import free_port

PGBIN = "/usr/lib/postgresql/15/bin"
DEFAULT_HOST = "127.0.0.21"
PASSWORD = "k3stw-pg-secret"
START_TIMEOUT = 30


# Runs beside the test process: when the test process ends without stopping
# the server (killed, crashed), its end of the pipe closes without a "done"
# and this stops the
# server and removes its directory.
_WATCHDOG = """
import shutil, subprocess, sys
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
data, directory, *stop = sys.argv[1:]
subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
shutil.rmtree(directory, ignore_errors=True)
"""


class PostgresStartError(Exception):
    """The server did not come up; the message carries its log tail."""


def _pgbin() -> str:
    if os.path.exists(os.path.join(PGBIN, "initdb")):
        return PGBIN
    candidates = (
        sorted(
            d
            for d in os.listdir("/usr/lib/postgresql")
            if os.path.isdir(f"/usr/lib/postgresql/{d}")
        )
        if os.path.isdir("/usr/lib/postgresql")
        else []
    )
    if not candidates:
        raise PostgresStartError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin)")
    return f"/usr/lib/postgresql/{candidates[-1]}/bin"


class PostgresServer:
    """
    One throwaway PostgreSQL cluster.  The superuser C{postgres} has the
    password L{PASSWORD} over TCP (scram-sha-256), so endpoints carry a real secret.
    """

    def __init__(
        self, host: str = DEFAULT_HOST, port: int | None = None, netns: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.directory = tempfile.mkdtemp(prefix="k3stw-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.bin = _pgbin()
        self._as_user: list[str] = []
        self.pid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        if netns is not None:
            # In a test machine's network namespace, C{host} one of its addresses.
            self._as_user = ["ip", "netns", "exec", netns, *self._as_user]
        self._initialised = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    def _run(self, *argv: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None = None) -> None:
        tail = ""
        if os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                tail = "".join(f.readlines()[-20:])
        output = (result.stdout + result.stderr) if result is not None else ""
        raise PostgresStartError(f"{what}\n{output}\n--- server log ---\n{tail}")

    def start(self) -> PostgresServer:
        if not self._initialised:
            pwfile = os.path.join(self.directory, "pwfile")
            with open(pwfile, "w") as f:
                f.write(PASSWORD + "\n")
            if self._as_user:
                entry = pwd.getpwnam("postgres")
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            result = self._run(
                f"{self.bin}/initdb",
                "-D",
                self.data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
            if result.returncode != 0:
                self._fail("initdb failed", result)
            if self._as_user[:1] == ["ip"]:
                # Its clients are other machines, not loopback.
                with open(os.path.join(self.data, "pg_hba.conf"), "a") as hba:
                    hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
            self._initialised = True
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        result = self._run(
            f"{self.bin}/pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log,
            "-w",
            "-t",
            "30",
            "-o",
            options,
            "start",
        )
        if result.returncode != 0:
            self._fail(f"pg_ctl start on {self.host}:{self.port} failed", result)
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        if self._watchdog is None:
            stop = [
                *self._as_user,
                f"{self.bin}/pg_ctl",
                "-D",
                self.data,
                "-m",
                "immediate",
                "stop",
            ]
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, self.data, self.directory, *stop],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster (C{pg_ctl stop} signals the PID in its pid file)."""
        if self.pid is None:
            return
        result = self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")
        if result.returncode != 0 and os.path.exists(os.path.join(self.data, "postmaster.pid")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)
        self.pid = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            assert watchdog.stdin is not None
            watchdog.stdin.write(b"done")
            watchdog.stdin.close()
            watchdog.wait()

    def endpoint(self, database: str) -> str:
        return f"postgres://postgres:{PASSWORD}@{self.host}:{self.port}/{database}"


_shared: PostgresServer | None = None
_counter = 0


def shared_postgres() -> PostgresServer:
    """One server for the whole test process, started on first use, stopped at exit."""
    global _shared
    if _shared is None:
        server = PostgresServer()
        atexit.register(server.destroy)
        server.start()
        _shared = server
    return _shared


def fresh_database_name(prefix: str = "k3stw") -> str:
    """A database name no other test in this process has used."""
    global _counter
    _counter += 1
    return f"{prefix}_{os.getpid()}_{_counter}_{int(time.monotonic() * 1000) % 100000}"
