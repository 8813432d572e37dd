"""
Container images for tests, with no registry: docker-archive tarballs (what
``docker save`` writes, what containerd's import reads) made from Debian's
``busybox-static``.

- L{pause_image}: k3s's pause image name; its entrypoint is ``sleep inf``.
- L{busybox_image}: ``sh``, ``httpd``, ``wget``, ``sleep``, ``cat``, ``echo``...
  with an ``index.html`` under ``/www`` for ``httpd -f -p 80 -h /www``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
#: The applets linked into the images' /bin.
APPLETS = (
    "sh", "sleep", "httpd", "wget", "cat", "echo", "ls", "ps", "kill", "true", "false",
    "env", "hostname", "ip", "id", "mkdir", "rm", "test", "touch", "nc", "grep",
    "tar", "tty", "stty",
)  # fmt: skip
PAUSE = "docker.io/rancher/mirrored-pause:3.6"
BUSYBOX_IMAGE = "docker.io/library/busybox:k3stw"
INDEX_HTML = b"hello from k3stw\n"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _add(layer: tarfile.TarFile, name: str, data: bytes | None = None, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    for key, value in fields.items():
        setattr(info, key, value)
    if data is None and info.type == tarfile.REGTYPE:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        layer.addfile(info)
    else:
        info.size = len(data or b"")
        layer.addfile(info, io.BytesIO(data or b""))


def _layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "www", "root"):
            _add(layer, directory)
        _add(layer, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(layer, f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        for name, data in files.items():
            _add(layer, name, data, mode=0o644)
    return out.getvalue()


def docker_archive(
    tag: str,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    files: dict[str, bytes] | None = None,
) -> bytes:
    """One image, as ``docker save`` writes it, named C{tag}."""
    layer = _layer(files or {})
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": list(entrypoint), "Cmd": list(cmd), "Env": [PATH]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        _add(archive, f"{layer_id}/layer.tar", layer)
        _add(archive, config_name, config)
        _add(archive, "manifest.json", json.dumps(manifest).encode())
    return out.getvalue()


def pause_image() -> bytes:
    """The pause image (k3s's name for it), whose process sleeps forever."""
    return docker_archive(PAUSE, ["/bin/sleep", "inf"])


def busybox_image() -> bytes:
    """A busybox image whose default command is ``sh``."""
    return docker_archive(BUSYBOX_IMAGE, [], ["/bin/sh"], {"www/index.html": INDEX_HTML})


def write_airgap_images(images_dir: Path, compress: str = "gz") -> list[Path]:
    """
    Write both images into C{images_dir} (a node's ``agent/images``): the
    pause image as ``.tar``, busybox compressed (``gz``, ``zst`` or none).
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    pause = images_dir / "pause.tar"
    pause.write_bytes(pause_image())
    raw = busybox_image()
    if compress == "gz":
        busybox = images_dir / "busybox.tar.gz"
        busybox.write_bytes(gzip.compress(raw, mtime=0))
    elif compress == "zst":
        busybox = images_dir / "busybox.tar.zst"
        busybox.write_bytes(
            subprocess.run(["zstd", "-q", "-c"], input=raw, check=True, capture_output=True).stdout
        )
    else:
        busybox = images_dir / "busybox.tar"
        busybox.write_bytes(raw)
    return [pause, busybox]
