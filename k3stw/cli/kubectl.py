"""
``k3s kubectl ...``: the real ``kubectl`` with the admin kubeconfig, as
k3s's: unless ``$KUBECONFIG`` or ``--kubeconfig`` says otherwise,
``/etc/rancher/k3s/k3s.yaml`` if it exists, else ``~/.kube/k3s.yaml``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping

ROOT_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
USER_KUBECONFIG = "~/.kube/k3s.yaml"


def kubeconfig(
    argv: list[str],
    environ: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
) -> str | None:
    """The kubeconfig k3s picks for kubectl (None: the user chose one already)."""
    if environ.get("KUBECONFIG") or any(
        a == "--kubeconfig" or a.startswith("--kubeconfig=") for a in argv
    ):
        return None
    if exists(ROOT_KUBECONFIG):
        return ROOT_KUBECONFIG
    return os.path.expanduser(USER_KUBECONFIG)


def _real_kubectl() -> str | None:
    """kubectl on $PATH, skipping this command itself when it runs as a link named kubectl."""
    me = os.path.realpath(sys.argv[0])
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("kubectl", path=directory)
        if candidate is not None and os.path.realpath(candidate) != me:
            return candidate
    return None


def main(argv: list[str], command: str = "kubectl") -> int:
    environ = dict(os.environ)
    chosen = kubeconfig(argv, environ)
    if chosen is not None:
        environ["KUBECONFIG"] = chosen
        if os.path.exists(chosen) and not os.access(chosen, os.R_OK):
            print(
                f"WARN[0000] Unable to read {chosen}, please start server with "
                "--write-kubeconfig-mode to modify kube config permissions",
                file=sys.stderr,
            )
    kubectl = _real_kubectl()
    if kubectl is None:
        print("FATA[0000] kubectl: executable file not found in $PATH", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os.execve(kubectl, ["kubectl", *argv], environ)
