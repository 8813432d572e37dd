"""kubeconfig files, in the shape k3s writes ``/etc/rancher/k3s/k3s.yaml``."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from k3stw.files import write_if_changed
from k3stw.pki.certs import KeyPair


def render_kubeconfig(server_url: str, ca_bundle: bytes, client: KeyPair) -> bytes:
    """A kubeconfig with one cluster, user and context, all named ``default``."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    document = {
        "apiVersion": "v1",
        "clusters": [
            {
                "cluster": {"certificate-authority-data": b64(ca_bundle), "server": server_url},
                "name": "default",
            }
        ],
        "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
        "current-context": "default",
        "kind": "Config",
        "preferences": {},
        "users": [
            {
                "name": "default",
                "user": {
                    "client-certificate-data": b64(client.certificate_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
    }
    return yaml.safe_dump(document, default_flow_style=False).encode("utf-8")


def write_kubeconfig(
    path: Path, server_url: str, ca_bundle: bytes, client: KeyPair, mode: int
) -> None:
    """Write (or leave untouched, when identical) a kubeconfig with C{mode}."""
    write_if_changed(path, render_kubeconfig(server_url, ca_bundle, client), mode)
