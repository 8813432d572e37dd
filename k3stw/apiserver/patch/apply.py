"""Server-side apply (``application/apply-patch+yaml``) and the field ownership of other writes.

L{apply_server_side} merges an applied configuration the way structured-merge-diff does and
records ownership in ``metadata.managedFields``; L{record_update} keeps that ownership for
every other write (create, update, patch).
"""

from __future__ import annotations

from typing import Any

from k3stw.apiserver.patch.errors import (
    ApplyConflict,
    FieldConflict,
    InvalidPatch,
    cannot_unmarshal,
)
from k3stw.apiserver.patch.managedfields import (
    FieldPath,
    ManagedFieldsEntry,
    ancestors,
    compare,
    decode_managed_fields,
    element_of,
    field_values,
    owned_fields,
    path_string,
    strip_unowned,
    with_managed_fields,
)
from k3stw.apiserver.patch.rules import FieldRule, RuleTable, join_path, rule_at
from k3stw.apiserver.patch.strategic import clean
from k3stw.apiserver.patch.values import JSONObject, JSONValue, KubeObject
from k3stw.machinery.objects import copy_json


class _ApplyMerge:
    """structured-merge-diff's merge of an applied configuration into a live object."""

    def __init__(self, rules: RuleTable) -> None:
        self.rules = rules

    def merge_object(
        self, live: dict[str, JSONValue], applied: dict[str, JSONValue], dotted: str
    ) -> dict[str, JSONValue]:
        out = dict(live)
        for name, value in applied.items():
            if value is None:
                out.pop(name, None)
                continue
            child = join_path(dotted, name)
            out[name] = self.merge_value(out.get(name), value, rule_at(self.rules, child), child)
        return out

    def merge_value(
        self, live: JSONValue, applied: JSONValue, rule: FieldRule, dotted: str
    ) -> JSONValue:
        if isinstance(live, dict) and isinstance(applied, dict) and not rule.atomic:
            return self.merge_object(live, applied, dotted)
        if isinstance(live, list) and isinstance(applied, list) and rule.list_type:
            return self.merge_list(live, applied, rule, dotted)
        cleaned, _ = clean(applied)
        return cleaned

    def merge_list(
        self, live: list[JSONValue], applied: list[JSONValue], rule: FieldRule, dotted: str
    ) -> list[JSONValue]:
        """Merge keyed (or set) lists, ordering the result the way structured-merge-diff does.

        Live-only items keep their place; items in both appear in the applied order; applied-only
        items appear where the applied configuration puts them.
        """
        left = [(element_of(item, rule), item) for item in live]
        right = [(element_of(item, rule), item) for item in applied]
        left_keys = {element for element, _ in left}
        right_keys = {element for element, _ in right}
        by_left = {element: item for element, item in left}
        shared = [element for element, _ in right if element in left_keys]
        done: set[str | None] = set()
        out: list[JSONValue] = []

        def merged(element: str | None, item: JSONValue) -> JSONValue:
            done.add(element)
            previous = by_left.get(element) if element in left_keys else None
            if rule.list_type == "map" and isinstance(previous, dict) and isinstance(item, dict):
                return self.merge_object(previous, item, dotted)
            cleaned, _ = clean(item)
            return cleaned

        i = j = 0
        while i < len(left) or j < len(right):
            if i < len(left) and j < len(right):
                element = left[i][0]
                if element == right[j][0]:
                    out.append(merged(element, right[j][1]))
                    i += 1
                    j += 1
                    if shared and shared[0] == element:
                        shared.pop(0)
                    continue
                if element in right_keys and shared and shared[0] != element:
                    i += 1
                    continue
            if i < len(left):
                element = left[i][0]
                if element not in right_keys:
                    out.append(copy_json(left[i][1]))
                    i += 1
                    continue
                if element in done:
                    i += 1
            if j < len(right):
                element = right[j][0]
                out.append(merged(element, right[j][1]))
                j += 1
                if shared and shared[0] == element:
                    shared.pop(0)
        return out


def _child(container: dict[str, JSONValue] | list[JSONValue], key: str | int) -> JSONValue:
    if isinstance(container, dict):
        assert isinstance(key, str)
        return container[key]
    assert isinstance(key, int)
    return container[key]


def _remove_path(obj: JSONObject, path: FieldPath, rules: RuleTable, keep: set[FieldPath]) -> None:
    """Remove the field or list item at ``path``, then containers it leaves empty and unowned."""
    steps: list[tuple[dict[str, JSONValue] | list[JSONValue], str | int]] = []
    node: JSONValue = obj
    dotted = ""
    for element in path:
        if element.startswith("f:"):
            name = element[2:]
            if not isinstance(node, dict) or name not in node:
                return
            steps.append((node, name))
            dotted = join_path(dotted, name)
            node = node[name]
        else:
            rule = rule_at(rules, dotted)
            if not isinstance(node, list):
                return
            at = next((i for i, item in enumerate(node) if element_of(item, rule) == element), None)
            if at is None:
                return
            steps.append((node, at))
            node = node[at]
    for depth in range(len(steps) - 1, -1, -1):
        container, key = steps[depth]
        if depth < len(steps) - 1 and (_child(container, key) or path[: depth + 1] in keep):
            break
        if isinstance(container, dict):
            assert isinstance(key, str)
            del container[key]
        else:
            assert isinstance(key, int)
            del container[key]


def apply_server_side(
    live: KubeObject | None,
    applied: Any,
    manager: str,
    force: bool,
    *,
    now: str,
    subresource: str = "",
    rules: RuleTable,
) -> KubeObject:
    """Server-side apply ``applied`` for ``manager``; create the object when ``live`` is ``None``.

    Merges the applied configuration into the live object (keyed lists by their
    ``+listMapKey``\\ s, sets as sets, atomic lists and structs whole), removes fields this manager
    applied before and no longer applies unless another manager owns them, and records
    ownership in ``metadata.managedFields`` (operation ``Apply``, ``fieldsV1`` in ``f:``/``k:``/
    ``v:`` notation). A live object without managedFields is first attributed whole to
    ``before-first-apply``, as kube-apiserver does.

    :param live: the stored object, or ``None`` to create.
    :param applied: the decoded apply patch (a full or partial object with apiVersion and kind).
    :param manager: the ``fieldManager`` query parameter.
    :param force: the ``force`` query parameter: take fields from other managers.
    :param now: the RFC 3339 time to record, from the caller's clock.
    :param subresource: the subresource applied to (``"status"``), if any.
    :param rules: the merge rules of the object's kind (for a custom resource, metadata rules
        only: its lists are atomic).
    :return: the new object, with managedFields; the caller sets name, uid, resourceVersion.
    :raises InvalidPatch: the configuration is not an object or sets managedFields (400).
    :raises PatchNotApplicable: a keyed list item lacks its keys (422).
    :raises ApplyConflict: without ``force``, fields owned by others would change (409).
    """
    if not isinstance(applied, dict):
        raise cannot_unmarshal(applied, "map[string]interface {}")
    metadata = applied.get("metadata")
    if isinstance(metadata, dict) and metadata.get("managedFields"):
        raise InvalidPatch("metadata.managedFields must be nil")
    version = applied.get("apiVersion")
    api_version = version if isinstance(version, str) else ""
    fields = set(field_values(strip_unowned(applied), rules, strict=True))
    merger = _ApplyMerge(rules)
    mine = ManagedFieldsEntry(manager, "Apply", api_version, now, subresource, fields)
    if live is None:
        created = merger.merge_object({}, applied, "")
        return with_managed_fields(created, [mine])

    managers = decode_managed_fields(live)
    base = copy_json(live)
    if not managers:
        live_version = live.get("apiVersion")
        before = ManagedFieldsEntry(
            "before-first-apply",
            "Update",
            live_version if isinstance(live_version, str) else api_version,
            now,
            "",
        )
        before.fields = set(field_values(strip_unowned(live), rules))
        managers[before.identity] = before
    previous = managers.get(mine.identity)
    last = previous.fields if previous is not None else set()
    others = [m for key, m in managers.items() if key != mine.identity]

    result = merger.merge_object(base, applied, "")
    owned_elsewhere = set().union(*(m.fields for m in others)) if others else set()
    keep = fields | owned_elsewhere
    keep_with_ancestors = keep | ancestors(keep)
    for path in sorted(last - keep_with_ancestors, key=len):
        _remove_path(result, path, rules, keep_with_ancestors)

    comparison = compare(live, result, rules)
    changed = comparison.modified | comparison.added
    conflicts = [
        FieldConflict(other.printed(), path_string(path))
        for other in others
        for path in sorted(other.fields & changed)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for other in others:
        other.fields -= changed | comparison.removed

    if (
        previous is not None
        and previous.fields == fields
        and previous.api_version == api_version
        and not (comparison.modified or comparison.added or comparison.removed)
    ):
        # A no-op apply leaves the entry (and its time) alone, so nothing needs writing.
        mine = previous
    return with_managed_fields(result, [*others, mine])


def record_update(
    live: KubeObject | None,
    new: KubeObject,
    manager: str,
    *,
    now: str,
    subresource: str = "",
    rules: RuleTable,
) -> KubeObject:
    """Record field ownership for a write that is not an apply (create, update, patch).

    ``manager`` (the ``fieldManager`` parameter, or the user agent's program name as
    kube-apiserver defaults it, e.g. ``kubectl-edit``) takes the fields the write changed or
    added, as an ``Update`` entry; other managers lose them. Like kube-apiserver, an existing
    object that has no managedFields stays untracked until its first apply.

    :param live: the stored object, or ``None`` for a create.
    :param new: the object about to be stored; its own managedFields are ignored.
    :param manager: the manager the write is recorded for.
    :param now: the RFC 3339 time to record, from the caller's clock.
    :param subresource: the subresource written (``"status"``), if any.
    :param rules: the merge rules of the object's kind.
    :return: ``new``'s copy with managedFields set (sharing all but its metadata with ``new``).
    """
    result = dict(new)
    metadata = result.get("metadata")
    if isinstance(metadata, dict):
        metadata = result["metadata"] = dict(metadata)
        metadata.pop("managedFields", None)
    managers = decode_managed_fields(live) if live is not None else {}
    if live is not None and not managers:
        return result
    version = new.get("apiVersion")
    me = ManagedFieldsEntry(
        manager,
        "Update",
        version if isinstance(version, str) else "",
        now,
        subresource,
    )
    if live is None:
        # A create: the writer owns every field it sets, found in one walk.
        document = owned_fields(strip_unowned(result), rules)
        if document:
            result.setdefault("metadata", {})["managedFields"] = [me.encode(document)]
        return result
    comparison = compare(live, result, rules)
    changed = comparison.modified | comparison.added
    if not (changed or comparison.removed) and me.identity in managers:
        return with_managed_fields(result, managers.values())
    for other in managers.values():
        other.fields -= changed | comparison.removed
    previous = managers.pop(me.identity, None)
    me.fields = ((previous.fields if previous else set()) - comparison.removed) | changed
    return with_managed_fields(result, [*managers.values(), me])
