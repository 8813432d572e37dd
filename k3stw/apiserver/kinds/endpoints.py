"""
Endpoints (core/v1): the Table kubectl prints.
"""

from __future__ import annotations

from k3stw.apiserver.defaulting import fill_at
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    integer,
    mappings,
    name_cell,
    text,
)
from k3stw.hostport import join_host_port


def _endpoints_text(endpoints: Printed) -> str:
    subsets = mappings(endpoints.get("subsets"))
    if not subsets:
        return "<none>"
    shown: list[str] = []
    maximum = 3
    more = False
    count = 0
    for subset in subsets:
        addresses = [text(a.get("ip")) for a in mappings(subset.get("addresses"))]
        ports = mappings(subset.get("ports"))
        if not ports:
            # Headless services may have no ports.
            count += len(addresses)
            for ip in addresses:
                if len(shown) == maximum:
                    more = True
                    break
                shown.append(ip)
            continue
        for port in ports:
            count += len(addresses)
            for ip in addresses:
                if len(shown) == maximum:
                    more = True
                    break
                shown.append(join_host_port(ip, integer(port.get("port"))))
    joined = ",".join(shown)
    return f"{joined} + {count - maximum} more..." if more else joined


PRINTER = Printer(
    (
        NAME_COLUMN,
        Column(
            "Endpoints",
            description="The set of all endpoints is the union of all subsets.",
        ),
        AGE_COLUMN,
    ),
    lambda obj, now: [name_cell(obj), _endpoints_text(obj), age_cell(obj, now)],
)


RESOURCE = ResourceType(
    "",
    "v1",
    "Endpoints",
    "endpoints",
    "endpoints",
    namespaced=True,
    short_names=("ep",),
    strategy=Strategy(
        printer=PRINTER,
        default=lambda endpoints: fill_at(endpoints, "subsets[].ports[]", protocol="TCP"),
    ),
)
