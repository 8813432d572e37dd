"""RFC 6902 JSON patch (``application/json-patch+json``), as kube-apiserver applies it.

kube-apiserver uses evanphx/json-patch: RFC 6902 strictly (no negative indices, ``replace``
needs an existing target), with that library's error messages, reproduced here word for word.
"""

from __future__ import annotations

import copy
from typing import Any

from k3stw.apiserver.patch.errors import (
    PatchNotApplicable,
    PatchTestFailed,
    PatchTooLarge,
    cannot_unmarshal,
)
from k3stw.apiserver.patch.values import JSONValue, json_equal

#: kube-apiserver refuses JSON patches with more operations than this (413).
MAX_JSON_PATCH_OPERATIONS = 10000


def _pointer_tokens(pointer: str) -> list[str] | None:
    """Split an RFC 6901 pointer into unescaped tokens; ``None`` when it is not a pointer."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _array_index(token: str, length: int, *, appending: bool) -> int | None:
    """The list index ``token`` names, or ``None``; ``-`` only names the end when ``appending``."""
    if appending and token == "-":
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    limit = length if appending else length - 1
    return index if index <= limit else None


class _Missing:
    """Marks an absent value where ``None`` is a legitimate JSON null."""


_MISSING = _Missing()


def _resolve_parent(document: JSONValue, tokens: list[str]) -> JSONValue | _Missing:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            index = _array_index(token, len(node), appending=False)
            if index is None:
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


class _JSONPatch:
    """One application of a JSON patch; owns (and mutates) its private copy of the document."""

    def __init__(self, document: JSONValue) -> None:
        self.document = copy.deepcopy(document)

    def get(self, pointer: str, op: str, role: str) -> JSONValue:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            return self.document
        parent = self.parent(pointer, tokens, op, role)
        key = tokens[-1] if tokens else ""
        if isinstance(parent, dict):
            if key not in parent:
                if op == "test":
                    raise PatchTestFailed(f"testing value {pointer} failed: test failed")
                missing = "key" if op == "replace" else f"{role}path"
                raise PatchNotApplicable(
                    f"{op} operation does not apply: doc is missing {missing}: {pointer}: "
                    "missing value"
                )
            return parent[key]
        assert isinstance(parent, list)
        index = _array_index(key, len(parent), appending=False)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        return parent[index]

    def parent(
        self, pointer: str, tokens: list[str] | None, op: str, role: str = ""
    ) -> dict[str, JSONValue] | list[JSONValue]:
        parent = _MISSING if tokens is None else _resolve_parent(self.document, tokens)
        if not isinstance(parent, dict | list):
            missing = "is missing path" if op == "test" else f"doc is missing {role}path"
            quoted = f'"{pointer}"' if op in ("add", "remove") else pointer
            raise PatchNotApplicable(
                f"{op} operation does not apply: {missing}: {quoted}: missing value"
            )
        return parent

    def add(self, pointer: str, value: JSONValue, op: str = "add") -> None:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            self.document = value
            return
        parent = self.parent(
            pointer, tokens, op, "" if op in ("add", "replace") else "destination "
        )
        assert tokens is not None
        key = tokens[-1]
        if isinstance(parent, dict):
            parent[key] = value
            return
        index = _array_index(key, len(parent), appending=True)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        parent.insert(index, value)

    def remove(self, pointer: str, op: str = "remove") -> JSONValue:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            raise PatchNotApplicable(
                f'{op} operation does not apply: doc is missing path: "": missing value'
            )
        role = "from " if op != "remove" else ""
        parent = self.parent(pointer, tokens, op, role)
        assert tokens is not None
        key = tokens[-1]
        if isinstance(parent, dict):
            if key not in parent:
                raise PatchNotApplicable(
                    f"error in {op} for path: '{pointer}': Unable to remove nonexistent key: "
                    f"{key}: missing value"
                )
            return parent.pop(key)
        index = _array_index(key, len(parent), appending=False)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        return parent.pop(index)


def _operation_member(operation: dict[str, JSONValue], name: str, op: str) -> str:
    value = operation.get(name)
    if not isinstance(value, str):
        raise PatchNotApplicable(f"{op} operation failed to decode {name}: missing value")
    return value


def apply_json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch.

    Follows RFC 6902 strictly (no negative indices, ``replace`` needs an existing target), with
    kube-apiserver's (evanphx/json-patch's) error messages.

    :param document: the current object.
    :param operations: the decoded patch: a list of operation objects.
    :return: the patched document, a new value.
    :raises InvalidPatch: the patch is not a list of objects (400).
    :raises PatchTooLarge: more than L{MAX_JSON_PATCH_OPERATIONS} operations (413).
    :raises PatchTestFailed: a ``test`` operation failed (422).
    :raises PatchNotApplicable: an operation does not apply to the document (422).
    """
    if not isinstance(operations, list):
        raise cannot_unmarshal(operations, "jsonpatch.Patch")
    if len(operations) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchTooLarge(
            "The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(operations)}"
        )
    state = _JSONPatch(document)
    for operation in operations:
        if not isinstance(operation, dict):
            raise cannot_unmarshal(operation, "jsonpatch.Operation")
        op = operation.get("op")
        if op not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchNotApplicable(f"Unexpected kind: {op if isinstance(op, str) else 'unknown'}")
        path = _operation_member(operation, "path", op)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchNotApplicable("operation, missing value field: missing value")
        value = copy.deepcopy(operation.get("value"))
        if op == "add":
            state.add(path, value)
        elif op == "remove":
            state.remove(path)
        elif op == "replace":
            state.get(path, op, "")
            if path == "":
                state.document = value
            else:
                state.remove(path, op)
                state.add(path, value, op)
        elif op == "test":
            if not json_equal(state.get(path, op, ""), value):
                raise PatchTestFailed(f"testing value {path} failed: test failed")
        else:
            source = _operation_member(operation, "from", op)
            if op == "move":
                if path.startswith(source + "/"):
                    raise PatchNotApplicable(
                        f"move operation does not apply: from {source} is a prefix of path {path}"
                    )
                state.get(source, op, "from ")
                state.add(path, state.remove(source, op), op)
            else:
                state.add(path, copy.deepcopy(state.get(source, op, "from ")), op)
    return state.document
