"""kubeconfig files, in the shape k3s writes ``/etc/rancher/k3s/k3s.yaml``."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from k3stw.files import write_if_changed
from k3stw.pki.certs import KeyPair

#: The kubeconfig as PyYAML's C{safe_dump} writes it (keys sorted, block style); the test
#: compares the two byte for byte.  (PyYAML would cost a server or agent a megabyte of
#: memory for this one file.)
_TEMPLATE = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {certificate}
    client-key-data: {key}
"""
#: A URL that YAML reads as itself without quotes.
_PLAIN_URL = re.compile(r"https://[A-Za-z0-9.\-\[\]:]+")


def render_kubeconfig(server_url: str, ca_bundle: bytes, client: KeyPair) -> bytes:
    """A kubeconfig with one cluster, user and context, all named ``default``."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    # Any other URL is double-quoted: JSON's string syntax is YAML's too.
    server = server_url if _PLAIN_URL.fullmatch(server_url) else json.dumps(server_url)
    text = _TEMPLATE.format(
        ca=b64(ca_bundle),
        server=server,
        certificate=b64(client.certificate_pem),
        key=b64(client.key_pem),
    )
    return text.encode("utf-8")


def write_kubeconfig(
    path: Path, server_url: str, ca_bundle: bytes, client: KeyPair, mode: int
) -> None:
    """Write (or leave untouched, when identical) a kubeconfig with C{mode}."""
    write_if_changed(path, render_kubeconfig(server_url, ca_bundle, client), mode)
