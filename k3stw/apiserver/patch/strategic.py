"""Kubernetes strategic merge patch (``application/strategic-merge-patch+json``).

A JSON merge patch whose lists merge by the keys a L{k3stw.apiserver.patch.rules.RuleTable}
gives, with the directives of k8s.io/apimachinery's strategicpatch package and its error messages.
"""

from __future__ import annotations

import copy
from typing import Any

from k3stw.apiserver.patch.errors import (
    InvalidPatch,
    PatchNotApplicable,
    StrategicMergeError,
    cannot_unmarshal,
)
from k3stw.apiserver.patch.rules import FieldRule, RuleTable, join_path, rule_at
from k3stw.apiserver.patch.values import JSONValue, KubeObject, go_kind, json_equal

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ELEMENT_ORDER = "$setElementOrder/"
_DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"


def _go_format(value: JSONValue) -> str:
    """``value`` as Go's ``%v`` prints a decoded JSON value, for error messages."""
    if isinstance(value, dict):
        inner = " ".join(f"{key}:{_go_format(value[key])}" for key in sorted(value))
        return f"map[{inner}]"
    if isinstance(value, list):
        return "[" + " ".join(_go_format(item) for item in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_GO_TYPE_NAMES = {
    "map": "map[string]interface {}",
    "slice": "[]interface {}",
    "bool": "bool",
    "string": "string",
    "number": "float64",
    "nil": "<nil>",
}


def _bad_arg(expected: str, actual: JSONValue) -> StrategicMergeError:
    return StrategicMergeError(
        f"expected a {_GO_TYPE_NAMES[expected]}, but received a {_GO_TYPE_NAMES[go_kind(actual)]}"
    )


def clean(value: JSONValue) -> tuple[JSONValue, bool]:
    """Drop directives and null members from a value the patch adds; ``False``: drop it whole.

    kube-apiserver decodes the merged map into a typed object, which loses nulls and directive
    keys; stored as plain JSON here, they must go explicitly. Server-side apply cleans what it
    takes from an applied configuration the same way.
    """
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        cleaned: dict[str, JSONValue] = {}
        for key, member in value.items():
            if member is None or key == _RETAIN_KEYS:
                continue
            if key.startswith((_SET_ELEMENT_ORDER, _DELETE_FROM_PRIMITIVE_LIST)):
                continue
            member, keep = clean(member)
            if keep:
                cleaned[key] = member
        return cleaned, True
    if isinstance(value, list):
        items = []
        for item in value:
            item, keep = clean(item)
            if keep:
                items.append(item)
        return items, True
    return value, True


class _StrategicMerge:
    """One strategic merge; mutates the private copies it is given."""

    def __init__(self, rules: RuleTable) -> None:
        self.rules = rules

    def rule(self, path: str) -> FieldRule:
        return rule_at(self.rules, path)

    def merge_map(
        self, original: dict[str, JSONValue], patch: dict[str, JSONValue], path: str
    ) -> dict[str, JSONValue]:
        if _DIRECTIVE in patch:
            directive = patch[_DIRECTIVE]
            if directive == "replace":
                replaced, _ = clean({k: v for k, v in patch.items() if k != _DIRECTIVE})
                assert isinstance(replaced, dict)
                return replaced
            if directive == "delete":
                return {}
            raise StrategicMergeError(
                f"unknown patch type: {_go_format(directive)} in map: {_go_format(patch)}"
            )
        if _RETAIN_KEYS in patch:
            self.retain_keys(original, patch)
        self.set_element_orders(original, patch, path)
        for key, value in patch.items():
            if key.startswith(_DELETE_FROM_PRIMITIVE_LIST[:-1]) and not key.startswith(
                _DELETE_FROM_PRIMITIVE_LIST
            ):
                raise InvalidPatch("invalid patch format of primitive list")
            delete_list = key.startswith(_DELETE_FROM_PRIMITIVE_LIST)
            name = key[len(_DELETE_FROM_PRIMITIVE_LIST) :] if delete_list else key
            if value is None:
                original.pop(name, None)
                continue
            if name not in original:
                if not delete_list:
                    self.take(original, name, value)
                continue
            current = original[name]
            child = join_path(path, name)
            if go_kind(current) != go_kind(value):
                if not delete_list:
                    self.take(original, name, value)
            elif isinstance(current, dict) and isinstance(value, dict):
                if "replace" in self.rule(child).strategies:
                    self.take(original, name, value)
                else:
                    original[name] = self.merge_map(current, value, child)
            elif isinstance(current, list) and isinstance(value, list):
                original[name] = self.merge_list_field(current, value, child, delete_list)
            else:
                original[name] = value
        return original

    @staticmethod
    def take(original: dict[str, JSONValue], name: str, value: JSONValue) -> None:
        cleaned, keep = clean(value)
        if keep:
            original[name] = cleaned
        else:
            original.pop(name, None)

    @staticmethod
    def retain_keys(original: dict[str, JSONValue], patch: dict[str, JSONValue]) -> None:
        retained = patch.pop(_RETAIN_KEYS)
        if not isinstance(retained, list):
            raise InvalidPatch("invalid patch format of retainKeys")
        keep = {key for key in retained if isinstance(key, str)}
        for key, value in patch.items():
            if value is None or key.startswith((_SET_ELEMENT_ORDER, _DELETE_FROM_PRIMITIVE_LIST)):
                continue
            if key not in keep:
                raise InvalidPatch("invalid patch format of retainKeys")
        for key in [key for key in original if key not in keep]:
            del original[key]

    def merge_list_field(
        self, current: list[JSONValue], value: list[JSONValue], path: str, delete_list: bool
    ) -> list[JSONValue]:
        rule = self.rule(path)
        if "merge" in rule.strategies or delete_list:
            return self.merge_list(current, value, path, rule, delete_list)
        cleaned, _ = clean(value)
        assert isinstance(cleaned, list)
        return cleaned

    def set_element_orders(
        self, original: dict[str, JSONValue], patch: dict[str, JSONValue], path: str
    ) -> None:
        for key in [key for key in patch if key.startswith(_SET_ELEMENT_ORDER[:-1])]:
            if not key.startswith(_SET_ELEMENT_ORDER):
                raise InvalidPatch("invalid patch format of setElementOrder list")
            order = patch.pop(key)
            if not isinstance(order, list):
                raise _bad_arg("slice", order)
            name = key[len(_SET_ELEMENT_ORDER) :]
            child = join_path(path, name)
            rule = self.rule(child)
            found_original, found_patch = name in original, name in patch
            original_list = original.get(name, [])
            patch_list = patch.get(name, [])
            if not isinstance(original_list, list):
                raise _bad_arg("slice", original_list)
            if not isinstance(patch_list, list):
                raise _bad_arg("slice", patch_list)
            self.validate_order(patch_list, order, rule.merge_key)
            if found_original and found_patch:
                merged = self.merge_list_field(original_list, patch_list, child, False)
            elif found_patch:
                cleaned, _ = clean(patch_list)
                assert isinstance(cleaned, list)
                merged = cleaned
            elif found_original:
                merged = original_list
            else:
                continue
            is_map = any(isinstance(item, dict) for item in original_list + patch_list)
            ordered, server_only = self.partition(merged, order, rule.merge_key)
            original[name] = self.normalize_order(
                ordered, server_only, order, original_list, rule.merge_key, is_map
            )
            patch.pop(name, None)

    def validate_order(self, patch_list: list[JSONValue], order: list[JSONValue], key: str) -> None:
        if not order or not patch_list:
            return
        items = patch_list
        if key:
            for item in patch_list:
                if not isinstance(item, dict):
                    raise _bad_arg("map", item)
            items = [item for item in patch_list if _directive(item) != "delete"]
        at_patch = at_order = 0
        while at_patch < len(items) and at_order < len(order):
            if _directive(items[at_patch]) is not None:
                at_patch += 1
                continue
            if self.same_item(items[at_patch], order[at_order], key):
                at_patch += 1
            at_order += 1
        if at_patch < len(items) and at_order >= len(order):
            raise StrategicMergeError(
                f"The order in patch list:\n{_go_format(patch_list)}\n doesn't match "
                f"{_SET_ELEMENT_ORDER[:-1]} list:\n{_go_format(order)}\n"
            )

    @staticmethod
    def same_item(left: JSONValue, right: JSONValue, key: str) -> bool:
        if not key:
            return json_equal(left, right)
        if not isinstance(left, dict):
            raise _bad_arg("map", left)
        if not isinstance(right, dict):
            raise _bad_arg("map", right)
        for item in (left, right):
            if key not in item:
                raise _no_merge_key(item, key)
        return json_equal(left[key], right[key])

    def merge_list(
        self,
        original: list[JSONValue],
        patch: list[JSONValue],
        path: str,
        rule: FieldRule,
        delete_list: bool,
    ) -> list[JSONValue]:
        if not original and not patch:
            return original
        kinds = {go_kind(item) for item in original + patch} - {"nil"}
        if "slice" in kinds:
            raise PatchNotApplicable("lists of lists are not supported")
        if len(kinds) > 1:
            raise StrategicMergeError(
                f"list element types are not identical: {_go_format(original)} {_go_format(patch)}"
            )
        key = rule.merge_key
        if kinds != {"map"}:
            if delete_list:
                return [item for item in original if not any(json_equal(item, d) for d in patch)]
            merged: list[JSONValue] = []
            for item in original + patch:
                if not any(json_equal(item, seen) for seen in merged):
                    merged.append(item)
            ordered, server_only = self.partition(merged, patch, "")
            return self.normalize_order(ordered, server_only, patch, original, "", False)
        if not key:
            raise StrategicMergeError(f"cannot merge lists without merge key for {path}")
        original, patch = self.list_directives(original, patch, key)
        merged = list(original)
        for item in patch:
            assert isinstance(item, dict)
            if key not in item:
                raise _no_merge_key(item, key)
            at = _find_by_key(merged, key, item[key])
            if at is None:
                cleaned, _ = clean(item)
                merged.append(cleaned)
            else:
                existing = merged[at]
                assert isinstance(existing, dict)
                merged[at] = self.merge_map(existing, item, path)
        ordered, server_only = self.partition(merged, patch, key)
        return self.normalize_order(ordered, server_only, patch, original, key, True)

    @staticmethod
    def list_directives(
        original: list[JSONValue], patch: list[JSONValue], key: str
    ) -> tuple[list[JSONValue], list[JSONValue]]:
        """Apply ``$patch`` items of a keyed list; return the new original and the plain items."""
        plain: list[JSONValue] = []
        replace = False
        for item in patch:
            assert isinstance(item, dict)
            directive = _directive(item)
            if directive is None:
                plain.append(item)
            elif directive == "delete":
                if key not in item:
                    raise _no_merge_key(item, key)
                while (at := _find_by_key(original, key, item[key])) is not None:
                    original = original[:at] + original[at + 1 :]
            elif directive == "replace":
                replace = True
            elif directive == "merge":
                raise StrategicMergeError("merging lists cannot yet be specified in the patch")
            else:
                raise StrategicMergeError(
                    f"unknown patch type: {_go_format(directive)} in map: {_go_format(item)}"
                )
        if replace:
            cleaned, _ = clean(plain)
            assert isinstance(cleaned, list)
            return cleaned, []
        return original, plain

    @staticmethod
    def partition(
        merged: list[JSONValue], order: list[JSONValue], key: str
    ) -> tuple[list[JSONValue], list[JSONValue]]:
        """Split ``merged`` into the items ``order`` names and the rest, keeping their order."""
        named: list[JSONValue] = []
        rest: list[JSONValue] = []
        for item in merged:
            if key:
                if not isinstance(item, dict):
                    raise _bad_arg("map", item)
                if key not in item:
                    raise _no_merge_key(item, key)
                found = _find_by_key(order, key, item[key]) is not None
            else:
                found = any(json_equal(item, other) for other in order)
            (named if found else rest).append(item)
        return named, rest

    @staticmethod
    def normalize_order(
        from_patch: list[JSONValue],
        server_only: list[JSONValue],
        patch_order: list[JSONValue],
        server_order: list[JSONValue],
        key: str,
        is_map: bool,
    ) -> list[JSONValue]:
        """Order a merged list: patch order first, live order for the rest, interleaved.

        Patch items follow ``patch_order``; server-only items follow the live list; then each
        server-only item goes before the first patch item that comes after it in the live list.
        """
        field_key = key if is_map else ""

        def position(order: list[JSONValue], item: JSONValue) -> int | None:
            for at, other in enumerate(order):
                if field_key:
                    mine = item.get(field_key) if isinstance(item, dict) else None
                    theirs = other.get(field_key) if isinstance(other, dict) else None
                    if json_equal(mine, theirs):
                        return at
                elif json_equal(item, other):
                    return at
            return None

        def sort(items: list[JSONValue], order: list[JSONValue]) -> list[JSONValue]:
            deletions = [item for item in items if is_map and _directive(item) == "delete"]
            kept = [item for item in items if not (is_map and _directive(item) == "delete")]
            unranked = len(order)
            ranks = [position(order, item) for item in kept]
            ranked = sorted(
                range(len(kept)),
                key=lambda at: (unranked if ranks[at] is None else ranks[at], at),
            )
            return [kept[at] for at in ranked] + deletions

        right = sort(from_patch, patch_order)
        left = sort(server_only, server_order)
        result: list[JSONValue] = []
        i = j = 0
        while i < len(left) or j < len(right):
            if j >= len(right):
                result.append(left[i])
                i += 1
            elif i >= len(left):
                result.append(right[j])
                j += 1
            else:
                li, ri = position(server_order, left[i]), position(server_order, right[j])
                if li is not None and ri is not None and li < ri:
                    result.append(left[i])
                    i += 1
                else:
                    result.append(right[j])
                    j += 1
        return result


def _directive(item: JSONValue) -> JSONValue | None:
    return item.get(_DIRECTIVE) if isinstance(item, dict) else None


def _find_by_key(items: list[JSONValue], key: str, value: JSONValue) -> int | None:
    for at, item in enumerate(items):
        if not isinstance(item, dict):
            raise StrategicMergeError(f"value for key {at} is not a map")
        if key in item and json_equal(item[key], value):
            return at
    return None


def _no_merge_key(item: dict[str, JSONValue], key: str) -> StrategicMergeError:
    return StrategicMergeError(
        f"map: {_go_format(item)} does not contain declared merge key: {key}"
    )


def apply_strategic_merge_patch(document: Any, patch: Any, rules: RuleTable) -> KubeObject:
    """Apply a Kubernetes strategic merge patch, as kube-apiserver does for built-in kinds.

    Lists merge by the key ``rules`` gives for their path; other lists are replaced.
    Directives: ``$patch: replace|delete`` (in maps and list items), ``$retainKeys``,
    ``$setElementOrder/<list>``, ``$deleteFromPrimitiveList/<list>``; ``null`` deletes a key.
    Whether the object's kind takes strategic merge patches at all is the caller's decision
    (custom resources do not: L{k3stw.apiserver.patch.errors.UnsupportedPatchType}).

    :param document: the current object.
    :param patch: the decoded patch object.
    :param rules: the merge rules of the object's kind.
    :return: the patched object, a new value.
    :raises InvalidPatch: the patch is not an object, or a directive is malformed (400).
    :raises PatchNotApplicable: lists of lists (422).
    :raises StrategicMergeError: what kube-apiserver answers with a 500 (a list item without its
        merge key, ``$patch: merge``, an unknown directive, a ``$setElementOrder`` list that
        disagrees with the patch).
    """
    if not isinstance(patch, dict):
        raise cannot_unmarshal(patch, "map[string]interface {}")
    if not isinstance(document, dict):
        raise InvalidPatch("invalid JSON document")
    return _StrategicMerge(rules).merge_map(copy.deepcopy(document), copy.deepcopy(patch), "")
