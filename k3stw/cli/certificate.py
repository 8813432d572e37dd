"""
``k3s certificate check|rotate``.

``check`` lists every certificate (leaf and CA) in the server's ``tls/``
(``etcd/`` too) and the agent's directory, each with its subject, usages and
expiry, in k3s's lines (``-o table|json|yaml`` for the other layouts).

``rotate [--service a,b]``, with k3s stopped: backs ``server/tls`` up to
``server/tls-<unix>`` (an agent's certificates to ``agent/tls-<unix>``), then
deletes the named services' certificate and key files; the next start issues
new ones from the same CAs (a server its own, an agent's from the server).
The controller-manager, scheduler, cloud-controller and auth-proxy run inside
k3stw's server process without certificates of their own: naming them does
nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from k3stw.cli.common import CommandError, CommandParser, add_data_dir, fail

#: Each service k3s knows, and its certificate files in k3stw (``tls/`` or ``agent/``).
SERVICES: dict[str, tuple[str, ...]] = {
    "admin": ("tls/client-admin",),
    "api-server": ("tls/client-kube-apiserver", "tls/serving-kube-apiserver"),
    "controller-manager": (),
    "scheduler": (),
    "k3s-controller": ("agent/client-k3s-controller",),
    "k3s-server": ("tls/serving-kube-apiserver",),
    "cloud-controller": (),
    "etcd": ("tls/etcd/client", "tls/etcd/server-client", "tls/etcd/peer-server-client"),
    "auth-proxy": (),
    "kubelet": ("agent/client-kubelet", "agent/serving-kubelet"),
    "kube-proxy": ("agent/client-kube-proxy",),
}
AGENT_SERVICES = ("kubelet", "kube-proxy", "k3s-controller")
#: How close to expiry a certificate is reported as a warning (k3s 1.32.5's renewal window).
WARN_DAYS = 120
_USAGE_NAMES = {"1.3.6.1.5.5.7.3.2": "ClientAuth", "1.3.6.1.5.5.7.3.1": "ServerAuth"}


def _files(directory: Path, recursive: bool) -> list[Path]:
    if not directory.is_dir():
        return []
    found = directory.rglob("*.crt") if recursive else directory.glob("*.crt")
    return sorted(p for p in found if p.is_file())


def certificate_files(data_dir: Path) -> tuple[bool, list[Path]]:
    """Whether this is a server, and the certificate files to check."""
    server = (data_dir / "server").is_dir()
    files = _files(data_dir / "agent", recursive=False)
    if server:
        files += _files(data_dir / "server" / "tls", recursive=True)
    return server, files


def _usages(certificate: Any) -> str:
    from cryptography import x509

    names = []
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if basic.ca:
            names.append("CertSign")
    except x509.ExtensionNotFound:
        pass
    try:
        extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names += [_USAGE_NAMES.get(oid.dotted_string, oid.dotted_string) for oid in extended]
    except x509.ExtensionNotFound:
        pass
    return ",".join(sorted(names))


def rows(files: Iterable[Path], now: datetime.datetime) -> list[dict[str, Any]]:
    """One row per certificate in the files: file, subject, usages, expiry and status."""
    from cryptography.x509.oid import NameOID

    from k3stw.pki.certs import load_pem_certificates

    found = []
    for path in files:
        for certificate in load_pem_certificates(path.read_bytes()):
            names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            expires = certificate.not_valid_after_utc
            if now < certificate.not_valid_before_utc:
                status = "NOT YET VALID"
            elif expires <= now:
                status = "EXPIRED"
            elif expires - now < datetime.timedelta(days=WARN_DAYS):
                status = "WARNING"
            else:
                status = "OK"
            found.append(
                {
                    "filename": path.name,
                    "subject": str(names[0].value) if names else "",
                    "usages": _usages(certificate),
                    "expires": expires,
                    "notBefore": certificate.not_valid_before_utc,
                    "status": status,
                }
            )
    return found


def _rfc3339(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def text_line(row: dict[str, Any]) -> str:
    """k3s's log line for one certificate."""
    head = f"{row['filename']}: certificate {row['subject']} ({row['usages']})"
    status, expires = row["status"], _rfc3339(row["expires"])
    if status == "OK":
        return f"INFO[0000] {head} is ok, expires at {expires}"
    if status == "WARNING":
        return f"WARN[0000] {head} will expire within {WARN_DAYS} days at {expires}"
    if status == "EXPIRED":
        return f"ERRO[0000] {head} expired at {expires}"
    return f"ERRO[0000] {head} is not valid before {_rfc3339(row['notBefore'])}"


def _residual(expires: datetime.datetime, now: datetime.datetime) -> str:
    days = (expires - now).days
    if days >= 365:
        years = days // 365
        return f"{years} year{'s' if years > 1 else ''}"
    if days >= 1:
        return f"{days} day{'s' if days > 1 else ''}"
    hours = max(0, int((expires - now).total_seconds() // 3600))
    return f"{hours} hours"


def table(found: list[dict[str, Any]], now: datetime.datetime) -> str:
    header = ("FILENAME", "SUBJECT", "USAGES", "EXPIRES", "RESIDUAL TIME", "STATUS")
    lines = [header, tuple("-" * len(h) for h in header)]
    for row in found:
        expires = row["expires"].strftime("%b %d, %Y %H:%M UTC")
        residual = _residual(row["expires"], now)
        lines.append(
            (row["filename"], row["subject"], row["usages"], expires, residual, row["status"])
        )
    widths = [max(len(line[i]) for line in lines) + 2 for i in range(5)]
    return "".join(
        "".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line[:5])) + line[5] + "\n"
        for line in lines
    )


def selected(services: list[str] | None, server: bool) -> list[str]:
    """The services named (comma lists or repeated), or k3s's default for the role."""
    if not services:
        return list(SERVICES) if server else list(AGENT_SERVICES)
    names = [n.strip() for given in services for n in given.split(",") if n.strip()]
    for name in names:
        if name not in SERVICES:
            raise CommandError(f"service {name} is not recognized")
    return names


def rotate(data_dir: Path, services: list[str] | None, now: float) -> list[str]:
    """Back up and delete the services' certificates; the lines k3s logs."""
    server = (data_dir / "server").is_dir()
    names = selected(services, server)
    lines = []
    tls = data_dir / "server" / "tls"
    agent = data_dir / "agent"
    if server:
        backup = data_dir / "server" / f"tls-{int(now)}"
        shutil.copytree(tls, backup, symlinks=True)
    else:
        backup = agent / f"tls-{int(now)}"
        backup.mkdir(mode=0o700, parents=True)
        for path in agent.glob("*.crt"):
            shutil.copy2(path, backup)
        for path in agent.glob("*.key"):
            shutil.copy2(path, backup)
    for name in names:
        lines.append(f"INFO[0000] Rotating certificates for {name}")
        for stem in SERVICES[name]:
            where, _, rest = stem.partition("/")
            base = (tls if where == "tls" else agent) / rest
            if where == "tls" and not server:
                continue
            for suffix in (".crt", ".key"):
                Path(str(base) + suffix).unlink(missing_ok=True)
    lines.append(
        f"INFO[0000] Successfully backed up certificates to {backup}, please restart k3s server "
        "or agent to rotate certificates"
    )
    return lines


def parser() -> CommandParser:
    parser = CommandParser(prog="k3s certificate", description="Manage K3s certificates")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=CommandParser)
    commands.required = True
    for name, summary in (
        ("check", "Check K3s component certificates on disk"),
        ("rotate", "Rotate K3s component certificates on disk"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        add_data_dir(command)
        command.add_argument(
            "--service", "-s", action="append",
            help="List of services to manage certificates for. Options include (admin, "
            "api-server, controller-manager, scheduler, k3s-controller, k3s-server, "
            "cloud-controller, etcd, auth-proxy, kubelet, kube-proxy)",
        )  # fmt: skip
        if name == "check":
            command.add_argument(
                "--output", "-o", default="text", choices=["text", "table", "json", "yaml"],
                help="Format output. Options: text, table, json, yaml",
            )  # fmt: skip
    return parser


def check(arguments: argparse.Namespace, now: datetime.datetime) -> None:
    data_dir = Path(arguments.data_dir)
    server, files = certificate_files(data_dir)
    if arguments.service:
        wanted = {
            Path(stem).name + ".crt"
            for name in selected(arguments.service, server)
            for stem in SERVICES[name]
        }
        files = [f for f in files if f.name in wanted]
    found = rows(files, now)
    if arguments.output == "text":
        detected = (
            "Server detected, checking agent and server certificates"
            if server
            else "Agent detected, checking agent certificates"
        )
        print(f"INFO[0000] {detected}", file=sys.stderr)
        for row in found:
            print(text_line(row), file=sys.stderr)
    elif arguments.output == "table":
        print(table(found, now), end="")
    else:
        plain = [
            {**row, "expires": _rfc3339(row["expires"]), "notBefore": _rfc3339(row["notBefore"])}
            for row in found
        ]
        if arguments.output == "json":
            print(json.dumps(plain, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(plain), end="")


def main(argv: list[str], command: str = "certificate") -> int:
    arguments = parser().parse_args(argv)
    try:
        if arguments.command == "check":
            check(arguments, datetime.datetime.now(datetime.UTC))
        else:
            for line in rotate(Path(arguments.data_dir), arguments.service, time.time()):
                print(line, file=sys.stderr)
    except (CommandError, OSError) as e:
        return fail(e)
    return 0
