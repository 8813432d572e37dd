"""
ServiceAccounts (core/v1): merge rules, the Table kubectl prints, and the
``token`` subresource (answered by L{k3stw.apiserver.tokens.request}).
"""

from __future__ import annotations

from k3stw.apiserver.patch.rules import (
    METADATA_ONLY_RULES,
    keyed_list,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    items,
    name_cell,
)

PRINTER = Printer(
    (
        NAME_COLUMN,
        Column(
            "Secrets",
            description="Secrets is a list of the secrets in the same namespace that pods "
            "running using this ServiceAccount are allowed to use.",
        ),
        AGE_COLUMN,
    ),
    lambda obj, now: [name_cell(obj), len(items(obj.get("secrets"))), age_cell(obj, now)],
)


RESOURCE = ResourceType(
    "",
    "v1",
    "ServiceAccount",
    "serviceaccounts",
    "serviceaccount",
    namespaced=True,
    short_names=("sa",),
    subresources=("token",),
    strategy=Strategy(
        printer=PRINTER,
        merge_rules={**METADATA_ONLY_RULES, "secrets": keyed_list("name")},
        returns_deleted_object=True,
    ),
)
