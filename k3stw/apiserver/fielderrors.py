"""
kube-apiserver's field errors (``k8s.io/apimachinery/pkg/util/validation/field``),
each a cause of a 422 ``Invalid``: ``(path, message)`` with the message in its
words (``Invalid value: "x": ...``, ``Required value``, ``Unsupported value``,
``Duplicate value``, ``Not found``, ``Forbidden``), and the value checks kind
modules share (ports, port names, DNS labels).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from k3stw.machinery.labels import dns_label_errors

#: One validation error: the field path and kube-apiserver's words for what is wrong
#: (``("spec.replicas", "Invalid value: -1: must be greater than or equal to 0")``).
Cause = tuple[str, str]


def go_value(value: Any) -> str:
    """A value as ``field.Invalid`` prints it: strings quoted, numbers and booleans bare."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def invalid(path: str, value: Any, detail: str) -> Cause:
    return (path, f"Invalid value: {go_value(value)}: {detail}")


def required(path: str, detail: str = "") -> Cause:
    return (path, f"Required value: {detail}" if detail else "Required value")


def not_supported(path: str, value: Any, supported: Iterable[str]) -> Cause:
    listed = ", ".join(go_value(s) for s in supported)
    return (path, f"Unsupported value: {go_value(value)}: supported values: {listed}")


def duplicate(path: str, value: Any) -> Cause:
    return (path, f"Duplicate value: {go_value(value)}")


def not_found(path: str, value: Any) -> Cause:
    return (path, f"Not found: {go_value(value)}")


def forbidden(path: str, detail: str) -> Cause:
    return (path, f"Forbidden: {detail}")


IMMUTABLE = "field is immutable"
#: The protocols of ports, as kube-apiserver lists them.
PROTOCOLS = ("SCTP", "TCP", "UDP")


def items_at(values: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each object of a list, with its path (``spec.ports[1]``); anything else is skipped."""
    if isinstance(values, list):
        for index, value in enumerate(values):
            if isinstance(value, dict):  # as decoded: cheaper to ask than Mapping
                yield f"{path}[{index}]", value


def once(path: str, name: Any, seen: set[str]) -> list[Cause]:
    """A name that must be unique among C{seen} (which it joins)."""
    if not isinstance(name, str):
        return []
    if name in seen:
        return [duplicate(path, name)]
    seen.add(name)
    return []


PORT_RANGE = "must be between 1 and 65535, inclusive"
NEGATIVE = "must be greater than or equal to 0"


def port_number_causes(path: str, port: Any) -> list[Cause]:
    """``validation.IsValidPortNum``: 1 to 65535."""
    if isinstance(port, int) and not isinstance(port, bool) and not 1 <= port <= 65535:
        return [invalid(path, port, PORT_RANGE)]
    return []


_PORT_NAME_CHARSET = re.compile(r"[-a-z0-9]+")


def port_name_errors(name: str) -> list[str]:
    """``validation.IsValidPortName`` (an IANA service name)."""
    errors = []
    if len(name) > 15:
        errors.append("must be no more than 15 characters")
    if not _PORT_NAME_CHARSET.fullmatch(name):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        errors.append("must contain at least one letter (a-z)")
    if "--" in name:
        errors.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def port_or_name_causes(path: str, port: Any) -> list[Cause]:
    """An int-or-string port: a number in range, or a port name."""
    if isinstance(port, str):
        return [invalid(path, port, m) for m in port_name_errors(port)]
    return port_number_causes(path, port)


def nonnegative_causes(path: str, value: Any) -> list[Cause]:
    """``ValidateNonnegativeField``."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return [invalid(path, value, NEGATIVE)]
    return []


_PERCENT = re.compile(r"[0-9]+%")
PERCENT = (
    "a valid percent string must be a numeric string followed by an ending '%' "
    "(e.g. '1%', or '93%', regex used for validation is '[0-9]+%')"
)


def int_or_percent(value: Any) -> int | None:
    """The number an int-or-percent holds (``25%`` is 25); None if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return int(value[:-1])
    return None


def int_or_percent_causes(path: str, value: Any) -> list[Cause]:
    """``ValidatePositiveIntOrPercent`` and ``IsNotMoreThan100Percent``."""
    if value is None:
        return []
    number = int_or_percent(value)
    if number is None:
        return [invalid(path, value, PERCENT)]
    causes = [invalid(path, value, NEGATIVE)] if number < 0 else []
    if isinstance(value, str) and number > 100:
        causes.append(invalid(path, value, "must not be greater than 100%"))
    return causes


def label_causes(path: str, value: Any) -> list[Cause]:
    """A DNS-1123 label (``ValidateDNS1123Label``); a missing one is required."""
    if not value:
        return [required(path)]
    if not isinstance(value, str):
        return []
    return [invalid(path, value, m) for m in dns_label_errors(value)]
