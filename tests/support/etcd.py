"""
Real etcd servers for tests and benchmarks: one member, or a cluster of
members on loopback, each in its own temporary directory on free ports.

Start-up problems raise L{EtcdStartError} (so a test errors, it never skips).
Every process is stopped by its own PID (C{kill -9}, which etcd survives
without harm and which avoids its slow leader hand-over on SIGTERM).
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from k3stw.datastore.etcd.gateway import ClientTLSPolicy, EtcdTLS, JSONBody, read_body
from k3stw.pki.certs import KeyPair, SubjectAltNames, Usage, new_ca, new_key, new_leaf
from tests.support.net import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
#: Loopback address this suite's etcd members listen on.
DEFAULT_HOST = "127.0.0.30"
START_TIMEOUT = 30.0


class EtcdStartError(Exception):
    """An etcd member did not come up; the message carries its log tail."""


@dataclass
class EtcdCerts:
    """A throwaway CA, a serving certificate for the members and a client certificate."""

    directory: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_tls(self) -> EtcdTLS:
        return EtcdTLS(cafile=self.ca, certfile=self.client_cert, keyfile=self.client_key)


def make_certs(directory: str, host: str = DEFAULT_HOST) -> EtcdCerts:
    """Write a CA, a server certificate for C{host} and a client certificate (ECDSA P-256)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = new_ca("k3stw-test-etcd-ca", now)
    client = new_leaf(ca, "k3stw", Usage.CLIENT, now)
    # etcd's JSON gateway dials its own gRPC port with the serving
    # certificate, so that one must be good for client auth as well.
    server_key = new_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd")]))
        .issuer_name(ca.certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(SubjectAltNames.of(["localhost", host]).extension(), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    server = KeyPair(server_cert, server_key)

    def write(path: str, data: bytes) -> str:
        full = os.path.join(directory, path)
        with open(full, "wb") as f:
            f.write(data)
        return full

    return EtcdCerts(
        directory=directory,
        ca=write("ca.pem", ca.certificate_pem),
        server_cert=write("server.pem", server.certificate_pem),
        server_key=write("server-key.pem", server.key_pem),
        client_cert=write("client.pem", client.certificate_pem),
        client_key=write("client-key.pem", client.key_pem),
    )


@dataclass
class EtcdMember:
    """One etcd process; C{kill} and C{start} again keep its data directory."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    initial_cluster: str
    cluster_token: str
    certs: EtcdCerts | None = None
    process: subprocess.Popen[bytes] | None = None
    started_once: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.certs else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def spawn(self) -> None:
        """Start the process (a restart reuses the data directory and joins as existing)."""
        if self.process is not None and self.process.poll() is None:
            raise EtcdStartError(f"etcd {self.name} is already running")
        args = [
            ETCD,
            "--name",
            self.name,
            "--data-dir",
            self.data_dir,
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "existing" if self.started_once else "new",
            "--initial-cluster-token",
            self.cluster_token,
            # Fast elections, as measured in reference/real-components.md.
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "100",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        if self.certs is not None:
            args += [
                "--cert-file",
                self.certs.server_cert,
                "--key-file",
                self.certs.server_key,
                "--trusted-ca-file",
                self.certs.ca,
                "--client-cert-auth",
            ]
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as e:
                raise EtcdStartError(f"cannot run {ETCD}: {e}") from e
        self.started_once = True

    def kill(self) -> None:
        """C{kill -9} this member by its PID (no-op if it is not running)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def wait_dead(self, reactor: Any) -> None:
        """Wait (without blocking the reactor) until the killed process is reaped."""
        while self.process is not None and self.process.poll() is None:
            await deferLater(reactor, 0.01)

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()[-8000:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass
class EtcdCluster:
    """A set of etcd members started together; C{stop} kills them and removes their files."""

    reactor: Any
    directory: str
    members: list[EtcdMember]
    certs: EtcdCerts | None
    _agent: Agent | None = None
    _pool: HTTPConnectionPool | None = None
    _stopped: bool = field(default=False)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def client_tls(self) -> EtcdTLS | None:
        return self.certs.client_tls() if self.certs else None

    def _http(self) -> Agent:
        if self._agent is None:
            self._pool = HTTPConnectionPool(self.reactor, persistent=False)
            policy = ClientTLSPolicy(self.certs.client_tls()) if self.certs else None
            if policy is None:
                self._agent = Agent(self.reactor, connectTimeout=1, pool=self._pool)
            else:
                self._agent = Agent(self.reactor, policy, connectTimeout=1, pool=self._pool)
        return self._agent

    async def _healthy(self, member: EtcdMember) -> bool:
        try:
            d = self._http().request(b"GET", (member.client_url + "/health").encode(), Headers({}))
            d.addTimeout(2, self.reactor)
            response = await d
            body = await read_body(response)
        except Exception:
            return False
        try:
            return bool(json.loads(body).get("health") == "true")
        except ValueError:
            return False

    async def wait_healthy(self, members: list[EtcdMember] | None = None) -> None:
        """Wait until every member in C{members} (default: all) reports healthy."""
        pending = list(members if members is not None else self.members)
        deadline = self.reactor.seconds() + START_TIMEOUT
        while pending:
            for member in list(pending):
                if member.process is not None and member.process.poll() is not None:
                    raise EtcdStartError(
                        f"etcd {member.name} exited with {member.process.returncode}:\n"
                        + member.log_tail()
                    )
                if await self._healthy(member):
                    pending.remove(member)
            if pending:
                if self.reactor.seconds() > deadline:
                    names = ", ".join(m.name for m in pending)
                    raise EtcdStartError(
                        f"etcd {names} not healthy after {START_TIMEOUT}s:\n"
                        + pending[0].log_tail()
                    )
                await deferLater(self.reactor, 0.05)

    async def _post(self, member: EtcdMember, path: str, body: dict[str, Any]) -> dict[str, Any]:
        d = self._http().request(
            b"POST",
            (member.client_url + path).encode(),
            Headers({b"Content-Type": [b"application/json"]}),
            JSONBody(json.dumps(body).encode()),
        )
        d.addTimeout(5, self.reactor)
        answer: dict[str, Any] = json.loads(await read_body(await d))
        return answer

    async def leader(self) -> EtcdMember:
        """The member that is the Raft leader now (asked of each member in turn)."""
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            status = await self._post(member, "/v3/maintenance/status", {})
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return member
        raise EtcdStartError("no etcd member says it is the leader")

    async def restart(self, member: EtcdMember) -> None:
        """Start a killed member again on its data and wait until it is healthy."""
        await member.wait_dead(self.reactor)
        member.spawn()
        await self.wait_healthy([member])

    async def stop(self) -> None:
        """Kill every member by PID, wait for them, and remove the files."""
        if self._stopped:
            return
        self._stopped = True
        for member in self.members:
            member.kill()
        for member in self.members:
            await member.wait_dead(self.reactor)
        if self._pool is not None:
            await self._pool.closeCachedConnections()
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.kill_at_exit)

    def kill_at_exit(self) -> None:
        """Last resort at interpreter exit: kill -9 every member by PID and reap it."""
        for member in self.members:
            member.kill()
            if member.process is not None:
                member.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


async def _start(reactor: Any, size: int, tls: bool, host: str) -> EtcdCluster:
    directory = tempfile.mkdtemp(prefix="k3stw-etcd-")
    certs = make_certs(directory, host) if tls else None
    token = os.path.basename(directory)
    ports = [(free_port(host), free_port(host)) for _ in range(size)]
    names = [f"m{i}" for i in range(1, size + 1)]
    initial = ",".join(
        f"{n}=http://{host}:{peer}" for n, (_, peer) in zip(names, ports, strict=True)
    )
    members = [
        EtcdMember(
            name=n,
            host=host,
            client_port=client,
            peer_port=peer,
            data_dir=os.path.join(directory, n),
            log_path=os.path.join(directory, f"{n}.log"),
            initial_cluster=initial,
            cluster_token=token,
            certs=certs,
        )
        for n, (client, peer) in zip(names, ports, strict=True)
    ]
    cluster = EtcdCluster(reactor=reactor, directory=directory, members=members, certs=certs)
    # If the process ends without stop() (a crash, a script that fails),
    # the members must not outlive it.
    atexit.register(cluster.kill_at_exit)
    try:
        for member in members:
            member.spawn()
        await cluster.wait_healthy()
    except BaseException:
        await cluster.stop()
        raise
    return cluster


def start_etcd(
    reactor: Any, size: int = 1, *, tls: bool = False, host: str = DEFAULT_HOST
) -> Deferred[EtcdCluster]:
    """
    Start C{size} etcd members on C{host} and fire when all are healthy.

    :param tls: serve https with a fresh CA and require client certificates.
    :raises EtcdStartError: a member exited or did not become healthy.
    """
    return Deferred.fromCoroutine(_start(reactor, size, tls, host))
