"""
The writer of the HA fault tests, run inside a test machine (never in this
host's network namespace):

    python -m tests.support.ha_writer write <tls-dir> <port> <record> <stop-file> <address>...
    python -m tests.support.ha_writer check <tls-dir> <port> <record> <address>
    python -m tests.support.ha_writer get <tls-dir> <port> <address> <path>
    python -m tests.support.ha_writer probe <tls-dir> <port> <address> <path> <record> <stop-file>
    python -m tests.support.ha_writer rate <tls-dir> <port> <address> <count>

``write`` creates ConfigMaps through every address at once, one after the
other through each (2 s per request, 10 a second at most), until ``<stop-file>`` exists,
appending ``<name> <address> <sent> <acknowledged>`` (monotonic times) to
``<record>`` for every write a server acknowledged (201), flushed at once.
``check`` lists the ConfigMaps through ``<address>`` and prints each
recorded name that is missing (nothing when none was lost); it exits 1
when the list fails.
``get`` prints the status of a GET of ``<path>`` (0 when nothing answers).
``probe`` GETs ``<path>`` every 0.1 s (1 s per request) until ``<stop-file>``
exists, appending ``<sent> <answered>`` (monotonic times) for each answered (200).
``rate`` makes ``<count>`` sequential ConfigMap creates through ``<address>``,
then as many puts straight to its etcd member's JSON gateway (``:2379``, the
client certificate ``etcd-client.crt``/``.key``, CA ``etcd-server-ca.crt``),
and prints JSON: per path, writes per second and the p50 and p99 in ms.
``<tls-dir>`` holds ``ca.crt`` and ``admin.pem`` (certificate and key).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TextIO

PATH = "/api/v1/namespaces/default/configmaps"


def context(tls: Path) -> ssl.SSLContext:
    found = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    found.load_cert_chain(str(tls / "admin.pem"))
    return found


def request(
    tls: ssl.SSLContext,
    address: str,
    port: int,
    method: str,
    body: object = None,
    path: str = PATH,
    timeout: float = 2,
) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection(address, port, context=tls, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def write(tls: ssl.SSLContext, port: int, record: Path, stop: Path, addresses: list[str]) -> None:
    """A writer thread per server, so that a server that hangs holds up only its own."""
    lock = threading.Lock()

    def through(index: int, address: str, out: TextIO) -> None:
        n = 0
        while not stop.exists():
            n += 1
            name = f"w{index}-{n}"
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
            began = time.monotonic()
            try:
                status, _ = request(tls, address, port, "POST", body)
            except OSError:
                continue
            if status == 201:
                with lock:
                    out.write(f"{name} {address} {began} {time.monotonic()}\n")
                    out.flush()
            # Ten writes a second per server at most: faults show within 0.1 s,
            # and the list stays small enough to check.
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))

    with record.open("a") as out:
        threads = [
            threading.Thread(target=through, args=(i, address, out))
            for i, address in enumerate(addresses)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def check(tls: ssl.SSLContext, port: int, record: Path, address: str) -> None:
    stored: set[str] = set()
    token = ""
    while True:
        # In pages: the bench's list runs to tens of thousands.
        path = f"{PATH}?limit=1000" + (f"&continue={urllib.parse.quote(token)}" if token else "")
        try:
            status, body = request(tls, address, port, "GET", path=path, timeout=30)
        except OSError as e:
            raise SystemExit(f"listing through {address}: {e}") from None
        if status != 200:
            raise SystemExit(f"listing through {address}: {status} {body!r}")
        page = json.loads(body)
        stored.update(item["metadata"]["name"] for item in page["items"])
        token = page["metadata"].get("continue", "")
        if not token:
            break
    for fields in map(str.split, record.read_text().splitlines()):
        # A line still being written (fewer fields) is no acknowledged write yet.
        if len(fields) == 4 and fields[0] not in stored:
            print(fields[0])


def probe(
    tls: ssl.SSLContext, port: int, address: str, path: str, record: Path, stop: Path
) -> None:
    with record.open("a") as out:
        while not stop.exists():
            began = time.monotonic()
            try:
                status = request(tls, address, port, "GET", path=path, timeout=1)[0]
            except OSError:
                status = 0
            if status == 200:
                out.write(f"{began} {time.monotonic()}\n")
                out.flush()
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))


def rate(tls: Path, port: int, address: str, count: int) -> None:
    value = "x" * 256
    etcd = ssl.create_default_context(cafile=str(tls / "etcd-server-ca.crt"))
    etcd.load_cert_chain(str(tls / "etcd-client.crt"), str(tls / "etcd-client.key"))
    paths = {
        "k3stw": (http.client.HTTPSConnection(address, port, context=context(tls), timeout=10),
                  PATH, lambda i: {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": f"rate-{i}"}, "data": {"v": value}}),
        "etcd": (http.client.HTTPSConnection(address, 2379, context=etcd, timeout=10),
                 "/v3/kv/put", lambda i: {"key": b64(f"/bench/raw/{i}"), "value": b64(value)}),
    }  # fmt: skip
    report = {}
    for label, (connection, path, body) in paths.items():
        latencies = []
        began = time.perf_counter()
        for i in range(count):
            start = time.perf_counter()
            connection.request(
                "POST", path, json.dumps(body(i)).encode(), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise SystemExit(f"{label} write {i}: {response.status}")
            latencies.append((time.perf_counter() - start) * 1000)
        elapsed = time.perf_counter() - began
        latencies.sort()
        report[label] = {
            "rate": count / elapsed,
            "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        }
    print(json.dumps(report))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def main(argv: list[str]) -> None:
    if argv[0] == "rate":
        rate(Path(argv[1]), int(argv[2]), argv[3], int(argv[4]))
        return
    command, tls, port = argv[0], context(Path(argv[1])), int(argv[2])
    if command == "probe":
        probe(tls, port, argv[3], argv[4], Path(argv[5]), Path(argv[6]))
    elif command == "write":
        write(tls, port, Path(argv[3]), Path(argv[4]), argv[5:])
    elif command == "check":
        check(tls, port, Path(argv[3]), argv[4])
    else:
        try:
            status = request(tls, argv[3], port, "GET", path=argv[4])[0]
        except OSError:
            status = 0
        print(status)


if __name__ == "__main__":
    main(sys.argv[1:])
