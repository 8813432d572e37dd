"""
Write the bootstrap RBAC policy the server reconciles at start-up
(``k3stw/apiserver/rbacpolicy.json.gz``) from kube-apiserver's own listing of
it and from k3s's additions:

    python tools/generate_rbac_policy.py [SOURCES [k3stw/apiserver/rbacpolicy.json.gz]]

SOURCES (``tools/rbacpolicy/``) is a folder with kube's
``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/testdata/`` files of the
release, written compactly (``cluster-roles.yaml``, ``cluster-role-bindings.yaml``,
``namespace-roles.yaml``, ``namespace-role-bindings.yaml``, and
kube-controller-manager's ``system:controller:`` roles, ``controller-roles.yaml``
and ``controller-role-bindings.yaml``) and ``k3s-rolebindings.yaml``, the roles
k3s's server adds.

kube stamps every bootstrap object with the ``kubernetes.io/bootstrapping``
label and the ``autoupdate`` annotation (its policy's ``addDefaultMetadata``),
so this does too; k3s's objects are written as k3s writes them.  The output
keeps only what the objects hold (no ``creationTimestamp: null``), as compact,
reproducible gzipped JSON.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

KUBE_FILES = (
    "cluster-roles.yaml",
    "cluster-role-bindings.yaml",
    "namespace-roles.yaml",
    "namespace-role-bindings.yaml",
    "controller-roles.yaml",
    "controller-role-bindings.yaml",
)
K3S_FILE = "k3s-rolebindings.yaml"
LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
ANNOTATIONS = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
KEPT = ("kind", "metadata", "rules", "aggregationRule", "roleRef", "subjects")
KEPT_METADATA = ("name", "namespace", "labels", "annotations")


def slim(obj: dict[str, Any], stamped: bool) -> dict[str, Any]:
    """One object as the server creates it: its kind, metadata and content, nothing empty."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k in KEPT_METADATA and v}
    if stamped:
        meta["labels"] = {**meta.get("labels", {}), **LABELS}
        meta["annotations"] = {**meta.get("annotations", {}), **ANNOTATIONS}
    kept = {k: obj[k] for k in KEPT if obj.get(k) is not None}
    kept["metadata"] = meta
    return kept


def read(path: Path, stamped: bool) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [slim(item, stamped) for item in document.get("items") or ()]


def policy(sources: Path) -> bytes:
    """The gzipped policy document from the files in C{sources}."""
    objects: list[dict[str, Any]] = []
    for name in KUBE_FILES:
        objects += read(sources / name, stamped=True)
    objects += read(sources / K3S_FILE, stamped=False)
    text = json.dumps({"objects": objects}, sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode(), mtime=0)


def main(sources: Path, out: Path) -> None:
    out.write_bytes(policy(sources))


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "tools/rbacpolicy"),
        Path(sys.argv[2] if len(sys.argv) > 2 else "k3stw/apiserver/rbacpolicy.json.gz"),
    )
