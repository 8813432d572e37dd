"""
Streams benchmark: ``kubectl exec`` and ``kubectl port-forward`` against a
real pod, a ``twistd -n k3s-server --container-runtime containerd`` in a test
machine, the port-forward next to the pod's IP reached directly.

    python bench/streams.py [--echoes 500] [--commands 30] [--size-mib 64]
                            [--log-lines 200] [--output docs/streams-benchmark.md]

1. exec round trip: one long-lived ``kubectl exec -i web -- cat``; each of
   C{--echoes} 64-byte writes is timed until its echo is read back;
2. whole command: ``kubectl exec web -- true``, C{--commands} times, each
   timed from start to exit (kubectl's start, its websocket, the API server's
   SPDY to the kubelet, CRI Exec, containerd, the process);
3. port-forward: a C{--size-mib} file (copied in with ``kubectl cp``) fetched
   from busybox httpd through ``kubectl port-forward``, and then from the
   pod's IP directly, three times each (the best counts);
4. ``kubectl logs -f`` latency: C{--log-lines} lines of a pod that writes one
   every 50 ms, each from containerd's time stamp to kubectl's output
   (bench/streams_logs.py).

The clients run inside the machine (``--inside``): nothing dials out of its
network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The sibling benchmarks' helpers (a script's own directory is on sys.path).
from api import machine as machine_text
from api import percentile
from pods import Cleanups, launch, say, tail
from streams_logs import follow_latency

from tests.support.images import BUSYBOX_IMAGE, write_airgap_images
from tests.support.machines import machines

KUBECTL = ["kubectl", "--kubeconfig", "/etc/rancher/k3s/k3s.yaml"]
ECHO = b"x" * 63 + b"\n"
LOCAL_PORT = 18080
GOAL_FORWARD_SHARE = 0.25
GOAL_ECHO_P99_MS = 20.0


# Inside the machine


def echo_round_trips(count: int) -> list[float]:
    """Seconds from each 64-byte write to ``kubectl exec -i ... cat`` until its echo is back."""
    process = subprocess.Popen(
        [*KUBECTL, "exec", "-i", "web", "--", "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert process.stdin is not None and process.stdout is not None
    samples = []
    try:
        for n in range(count + 5):
            started = time.perf_counter()
            process.stdin.write(ECHO)
            got = b""
            while len(got) < len(ECHO):
                piece = process.stdout.read(len(ECHO) - len(got))
                if not piece:
                    raise RuntimeError("kubectl exec ended early")
                got += piece
            if n >= 5:  # the first echoes warm the stream up
                samples.append(time.perf_counter() - started)
    finally:
        process.stdin.close()
        process.wait(30)
    return samples


def whole_commands(count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run([*KUBECTL, "exec", "web", "--", "true"], check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples


def fetch(host: str, port: int, path: str) -> tuple[int, float]:
    """
    Bytes of the body of C{path} and the seconds until its last byte came
    (HTTP/1.0, its ``Content-Length`` read).  Not until the connection's end:
    containerd's port-forward lingers a second after the pod's side closed,
    waiting for the client's, and cuts a stream a second after the client's
    side half-closed: neither is the stream's throughput.
    """
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        received = bytearray()
        while b"\r\n\r\n" not in received:
            piece = conn.recv(1 << 20)
            if not piece:
                raise RuntimeError(f"GET {path}: no answer")
            received += piece
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 200 " not in lines[0]:
            raise RuntimeError(f"GET {path}: {lines[0]}")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        got = len(body)
        while got < length:
            piece = conn.recv(1 << 20)
            if not piece:
                break
            got += len(piece)
        seconds = time.perf_counter() - started
    return got, seconds


def throughput(host: str, port: int, size: int) -> float:
    """The best of three fetches of the big file, in MiB/s."""
    best = 0.0
    for _ in range(3):
        length, seconds = fetch(host, port, "/big")
        if length != size:
            raise RuntimeError(f"fetched {length} bytes of {size}")
        best = max(best, length / seconds / (1 << 20))
    return best


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user and system) used so far by each command name of the machine."""
    used: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def port_forward(pod_ip: str, size: int) -> dict[str, Any]:
    with tempfile.TemporaryFile() as log:
        forwarder = subprocess.Popen(
            [*KUBECTL, "port-forward", "pod/web", f"{LOCAL_PORT}:80"], stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                log.seek(0)
                if b"Forwarding from" in log.read():
                    break
                if time.monotonic() > deadline or forwarder.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"port-forward did not start: {log.read()!r}")
                time.sleep(0.05)
            before = cpu_seconds()
            forwarded = throughput("127.0.0.1", LOCAL_PORT, size)
            after = cpu_seconds()
        finally:
            forwarder.terminate()
            forwarder.wait(10)
    gib = 3 * size / (1 << 30)
    cpu = {
        name: (after.get(name, 0.0) - before.get(name, 0.0)) / gib
        for name in ("twistd", "kubectl", "containerd")
    }
    return {"forwarded": forwarded, "direct": throughput(pod_ip, 80, size), "cpu": cpu}


def inside(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pod-ip", required=True)
    parser.add_argument("--echoes", type=int, required=True)
    parser.add_argument("--commands", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--log-lines", type=int, required=True)
    args = parser.parse_args(argv)
    found: dict[str, Any] = {
        "echo": echo_round_trips(args.echoes),
        "command": whole_commands(args.commands),
        "logs": follow_latency(
            lambda line: subprocess.Popen(line, shell=True, stdout=subprocess.PIPE),
            shlex.join(KUBECTL),
            "ticker",
            args.log_lines,
        ),
        **port_forward(args.pod_ip, args.size),
    }
    print(json.dumps(found))


# Outside: the machine, the server, the pod


def kubectl(node_machine: Any, arguments: str, timeout: float = 60) -> str:
    output: str = node_machine.run(f"{shlex.join(KUBECTL)} {arguments}", timeout=timeout)
    return output


def bench(
    work: Path, cleanups: Cleanups, echoes: int, commands: int, size_mib: int, log_lines: int
) -> dict[str, Any]:
    node_machine = machines(cleanups, work / "machines", 1)[0]  # type: ignore[arg-type]
    node_machine.boot(runtime=True)
    write_airgap_images(node_machine.rancher / "k3s" / "agent" / "images")
    node = launch(
        node_machine,
        "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
        " --node-ip 127.0.0.1 --node-name bench"
        f" --kubelet-arg cgroup-root={node_machine.cgroup_parent}",
        work / "server.log",
        "Successfully registered node bench",
    )
    cleanups.addCleanup(node.stop)
    say("server up; starting the pods")
    kubectl(
        node_machine,
        f"run web --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
        " --command -- /bin/httpd -f -p 80 -h /www",
    )
    # A line every 50 ms, for logs -f.
    kubectl(
        node_machine,
        f"run ticker --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
        " --command -- sh -c 'while :; do echo tick; usleep 50000; done'",
    )
    deadline = time.monotonic() + 90
    for name in ("web", "ticker"):
        while True:
            pod = json.loads(kubectl(node_machine, f"get pod {name} -o json"))
            if (pod.get("status") or {}).get("phase") == "Running":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not Running:\n{tail(work / 'server.log')}")
            time.sleep(0.5)
    pod = json.loads(kubectl(node_machine, "get pod web -o json"))
    size = size_mib << 20
    big = work / "big"
    big.write_bytes(os.urandom(size))
    kubectl(node_machine, f"cp {big} web:/www/big", timeout=300)
    say("measuring")
    command = [sys.executable, "-b", str(Path(__file__).resolve()), "--inside"]
    arguments = [
        "--pod-ip", pod["status"]["podIP"], "--echoes", str(echoes),
        "--commands", str(commands), "--size", str(size), "--log-lines", str(log_lines),
    ]  # fmt: skip
    output = node_machine.run(shlex.join(command + arguments), timeout=900)
    found: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return found


def ms(samples: Sequence[float], fraction: float) -> float:
    return percentile(samples, fraction) * 1000


def report(found: dict[str, Any], size_mib: int, stamp: str) -> str:
    echo, command, logs = found["echo"], found["command"], found["logs"]
    share = found["forwarded"] / found["direct"]
    echo_p99 = ms(echo, 0.99)
    lines = [
        "# Streams benchmark",
        "",
        f"`python bench/streams.py` on {stamp}: {machine_text()}.",
        "k3stw server with containerd in a test machine; kubectl in the machine opens its",
        "websockets to the API server, which speaks SPDY/3.1 to the node's kubelet (exec's",
        "channels translated to SPDY streams; port-forward's SPDY unwrapped from its websocket",
        "messages), which relays it to containerd's streaming server.",
        "",
        "| measure | samples | p50 | p99 |",
        "|---|---:|---:|---:|",
        f"| exec round trip, 64-byte echo (`kubectl exec -i web -- cat`) | {len(echo)} "
        f"| {ms(echo, 0.5):.2f} ms | {echo_p99:.2f} ms |",
        f"| whole command (`kubectl exec web -- true`) | {len(command)} "
        f"| {ms(command, 0.5):.0f} ms | {ms(command, 0.99):.0f} ms |",
        f"| `kubectl logs -f`: a line's write (containerd's time stamp) to kubectl's output "
        f"| {len(logs)} | {ms(logs, 0.5):.1f} ms | {ms(logs, 0.99):.1f} ms |",
        "",
        f"| {size_mib} MiB from busybox httpd, request to last byte (best of 3) | MiB/s |",
        "|---|---:|",
        f"| through `kubectl port-forward` | {found['forwarded']:.1f} |",
        f"| the pod's IP directly | {found['direct']:.1f} |",
        f"| share | {share:.0%} |",
        "",
        "CPU seconds per GiB through port-forward: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in found["cpu"].items())
        + " (twistd is the API server and the kubelet, both TLS hops).",
        "",
        "Goals:",
        f"- port-forward >= {GOAL_FORWARD_SHARE:.0%} of direct: {share:.0%} "
        f"({'met' if share >= GOAL_FORWARD_SHARE else 'MISSED'})",
        f"- exec round trip p99 < {GOAL_ECHO_P99_MS:.0f} ms: {echo_p99:.2f} ms "
        f"({'met' if echo_p99 < GOAL_ECHO_P99_MS else 'MISSED'})",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--echoes", type=int, default=500, help="timed echoes (500)")
    parser.add_argument("--commands", type=int, default=30, help="whole commands (30)")
    parser.add_argument("--size-mib", type=int, default=64, help="file size, MiB (64)")
    parser.add_argument("--log-lines", type=int, default=200, help="logs -f lines timed (200)")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    cleanups = Cleanups()
    work = Path(tempfile.mkdtemp(prefix="k3stw-bench-streams-"))
    say(f"work in {work}")
    try:
        found = bench(work, cleanups, args.echoes, args.commands, args.size_mib, args.log_lines)
    finally:
        cleanups.run()
    text = report(found, args.size_mib, time.strftime("%Y-%m-%d"))
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        inside(sys.argv[2:])
    else:
        main(sys.argv[1:])
