"""
EndpointSlices (discovery.k8s.io/v1): the Table kubectl prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from k3stw.apiserver.defaulting import fill_at
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    items,
    mappings,
    name_cell,
    text,
)


def _list_with_more(shown: list[str], more: bool, count: int, maximum: int) -> str:
    joined = ",".join(shown)
    if more:
        return f"{joined} + {count - maximum} more..."
    return joined or "<unset>"


def _slice_ports(ports: Iterable[Mapping[str, Any]]) -> str:
    shown: list[str] = []
    more = False
    count = 0
    for port in ports:
        if len(shown) < 3:
            number = port.get("port")
            if isinstance(number, int):
                shown.append(str(number))
            elif port.get("name") is not None:
                shown.append(text(port.get("name")))
            else:
                shown.append("*")
        elif len(shown) == 3:
            more = True
        count += 1
    return _list_with_more(shown, more, count, 3)


def _slice_endpoints(endpoints: Iterable[Mapping[str, Any]]) -> str:
    shown: list[str] = []
    more = False
    count = 0
    for endpoint in endpoints:
        for address in items(endpoint.get("addresses")):
            if len(shown) < 3:
                shown.append(text(address))
            elif len(shown) == 3:
                more = True
            count += 1
    return _list_with_more(shown, more, count, 3)


PRINTER = Printer(
    (
        NAME_COLUMN,
        Column(
            "AddressType",
            description="addressType specifies the type of address carried by this EndpointSlice.",
        ),
        Column(
            "Ports",
            description="ports specifies the list of network ports exposed by each endpoint "
            "in this slice.",
        ),
        Column("Endpoints", description="endpoints is a list of unique endpoints in this slice."),
        AGE_COLUMN,
    ),
    lambda obj, now: [
        name_cell(obj),
        text(obj.get("addressType")),
        _slice_ports(mappings(obj.get("ports"))),
        _slice_endpoints(mappings(obj.get("endpoints"))),
        age_cell(obj, now),
    ],
)


RESOURCE = ResourceType(
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    "endpointslices",
    "endpointslice",
    namespaced=True,
    strategy=Strategy(
        printer=PRINTER,
        default=lambda endpointslice: fill_at(endpointslice, "ports[]", protocol="TCP", name=""),
    ),
)
