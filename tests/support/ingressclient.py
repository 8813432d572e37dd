"""
Clients and a websocket backend for the Ingress tests, run as a script
inside a test machine (standard library only):

    python ingressclient.py get IP HOST PATH            # "<status> <body>"
    python ingressclient.py tls IP SNI PATH             # "<sha256 of the cert DER> <status> <body>"
    python ingressclient.py loop IP HOST PATH STOPFILE  # JSON: bodies seen, failures
    python ingressclient.py ws-server IP PORT           # a websocket echo server, forever
    python ingressclient.py ws-client IP HOST TEXT      # "<101 or status> <echoed text>"
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The longest a load loop runs, stop file or not.
LOOP_LIMIT = 120.0


def get(ip: str, host: str, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(ip, 80, timeout=10)
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response.status, body


def tls(ip: str, server_name: str, path: str) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((ip, 443), timeout=10)
    with context.wrap_socket(raw, server_hostname=server_name) as sock:
        der = sock.getpeercert(binary_form=True) or b""
        request = f"GET {path} HTTP/1.0\r\nHost: {server_name}\r\n\r\n"
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    return f"{hashlib.sha256(der).hexdigest()} {status} {body.decode()}"


def loop(ip: str, host: str, path: str, stop_file: str) -> str:
    """Requests one after another until C{stop_file} exists: the bodies seen, the failures."""
    bodies: dict[str, int] = {}
    failures: list[str] = []
    started = time.monotonic()
    while not os.path.exists(stop_file) and time.monotonic() - started < LOOP_LIMIT:
        try:
            status, body = get(ip, host, path)
            if status != 200:
                failures.append(f"{status} {body.strip()}")
            else:
                bodies[body.strip()] = bodies.get(body.strip(), 0) + 1
        except OSError as e:
            failures.append(repr(e))
        time.sleep(0.01)
    return json.dumps({"bodies": bodies, "failures": failures})


class _WebSocketEcho(socketserver.StreamRequestHandler):
    """RFC 6455's handshake, then each (small, masked) frame echoed back unmasked."""

    def handle(self) -> None:
        headers = {}
        self.rfile.readline()
        while (line := self.rfile.readline().strip()) != b"":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + WS_GUID).digest())
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while header := self.rfile.read(2):
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            mask = self.rfile.read(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                return
            self.wfile.write(bytes([0x80 | opcode, len(payload)]) + payload)


def ws_client(ip: str, host: str, text: str) -> str:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection((ip, 80), timeout=10) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + key
            + b"\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        head, _, rest = answer.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if status != "101" or b"Sec-WebSocket-Accept: " + expected not in head:
            return f"{status} {head.decode()}"
        payload, mask = text.encode(), os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
        while len(rest) < 2 + len(payload):
            rest += sock.recv(4096)
        return f"{status} {rest[2 : 2 + rest[1]].decode()}"


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "get":
        status, body = get(*args)
        print(status, body, end="")
    elif command == "tls":
        print(tls(*args), end="")
    elif command == "loop":
        print(loop(*args))
    elif command == "ws-server":
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((args[0], int(args[1])), _WebSocketEcho)
        print("listening", flush=True)
        server.serve_forever()
    elif command == "ws-client":
        print(ws_client(*args))


if __name__ == "__main__":
    main(sys.argv[1:])
