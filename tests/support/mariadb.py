"""
Real MariaDB servers for tests: C{mariadb-install-db} + C{mariadbd} in a
temporary directory, on one loopback address and a free port.

C{mariadbd} is started directly (so its PID is ours) with C{--user=mysql}
when the tests run as root, and stopped by that PID.  A user C{k3s} with a
password and every privilege is created, so endpoints carry a real secret.
Start-up problems raise L{MariaDBStartError} with the error log's tail: a test
that needs the server errors, it never skips.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pymysql

from tests.support.net import free_port

DEFAULT_HOST = "127.0.0.22"
USER = "k3s"
PASSWORD = "k3stw-my-secret"
START_TIMEOUT = 30.0


# Runs beside the test process: when the test process ends without stopping
# the server (killed, crashed), its end of the pipe closes without a "done"
# and this kills the
# server (if that PID is still our mariadbd) and removes its directory.
_WATCHDOG = """
import os, shutil, signal, sys, time
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
pid, data, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        ours = data.encode() in f.read()
except OSError:
    ours = False
if ours:
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
shutil.rmtree(directory, ignore_errors=True)
"""


class MariaDBStartError(Exception):
    """The server did not come up; the message carries its error log's tail."""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        if found:
            return found
    raise MariaDBStartError(f"MariaDB is not installed (none of {names} found)")


class MariaDBServer:
    """One throwaway MariaDB instance."""

    def __init__(
        self, host: str = DEFAULT_HOST, port: int | None = None, netns: str | None = None
    ) -> None:
        self.host = host
        # In a test machine's network namespace, C{host} one of its addresses.
        self._enter = ["ip", "netns", "exec", netns] if netns is not None else []
        self.port = port or free_port(host)
        self.directory = tempfile.mkdtemp(prefix="k3stw-mdb-")
        self.data = os.path.join(self.directory, "data")
        self.socket = os.path.join(self.directory, "mysqld.sock")
        self.error_log = os.path.join(self.directory, "error.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam("mysql")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._user = ["--user=mysql"]
        self._initialised = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    def _fail(self, what: str, output: str = "") -> None:
        tail = ""
        if os.path.exists(self.error_log):
            with open(self.error_log, errors="replace") as f:
                tail = "".join(f.readlines()[-20:])
        raise MariaDBStartError(f"{what}\n{output}\n--- error log ---\n{tail}")

    def start(self) -> MariaDBServer:
        if not self._initialised:
            result = subprocess.run(
                [
                    _binary("mariadb-install-db", "mysql_install_db"),
                    "--no-defaults",
                    *self._user,
                    f"--datadir={self.data}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                self._fail("mariadb-install-db failed", result.stdout + result.stderr)
        process = self.process = subprocess.Popen(
            [
                *self._enter,
                _binary("mariadbd", "mysqld"),
                "--no-defaults",
                *self._user,
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--pid-file={os.path.join(self.directory, 'mysqld.pid')}",
                f"--port={self.port}",
                f"--bind-address={self.host}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=300",
                f"--log-error={self.error_log}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                self.process = None
                self._fail(f"mariadbd on {self.host}:{self.port} exited")
            try:
                conn = pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=2)
                break
            except pymysql.err.MySQLError:
                if time.monotonic() > deadline:
                    self.stop()
                    self._fail(f"mariadbd on {self.host}:{self.port} did not answer")
                time.sleep(0.05)
        watchdog = self._watchdog
        if watchdog is not None:
            assert watchdog.stdin is not None
            watchdog.stdin.write(b"done")
            watchdog.stdin.close()
            watchdog.wait()
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(process.pid), self.data, self.directory],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            if not self._initialised:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
                    cur.execute(f"GRANT ALL ON *.* TO '{USER}'@'%'")
                self._initialised = True
        finally:
            conn.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        """SIGTERM to our own mariadbd, then SIGKILL if it takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

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
        return f"mysql://{USER}:{PASSWORD}@tcp({self.host}:{self.port})/{database}"


_shared: MariaDBServer | None = None


def shared_mariadb() -> MariaDBServer:
    """One server for the whole test process, started on first use, stopped at exit."""
    global _shared
    if _shared is None:
        server = MariaDBServer()
        atexit.register(server.destroy)
        server.start()
        _shared = server
    return _shared
