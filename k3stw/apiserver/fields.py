"""
Field selectors, parsed and matched the way kube-apiserver does it.

Each kind declares the fields it can be selected by (a L{FieldTable}, in its
module under L{k3stw.apiserver.kinds}); this module parses a
``fieldSelector`` against one.  The grammar and the wording of every error
follow ``k8s.io/apimachinery/pkg/fields`` and the field label conversions
kube-apiserver 1.32 registers, so a client sees the same ``400 BadRequest``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3stw.machinery.labels import SelectorError, go_quote, parse_label_selector
from k3stw.machinery.objects import get_path


class FieldSelectorError(SelectorError):
    """A field selector that does not parse."""


class UnsupportedFieldError(FieldSelectorError):
    """A well-formed field selector naming a field the kind cannot be selected by."""


FieldGetter = Callable[[Mapping[str, Any]], str]
"""Reads one selectable field of an object, as the string a selector compares."""


def field_text(value: Any) -> str:
    """A field value as Go's ``fmt.Sprint`` would render a string, bool or integer field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_path(*path: str | int) -> FieldGetter:
    """A getter for the value at ``path``, ``""`` when absent."""
    return lambda obj: field_text(get_path(obj, *path))


def boolean_field(*path: str) -> FieldGetter:
    return lambda obj: "true" if get_path(obj, *path) is True else "false"


NAME = field_path("metadata", "name")
NAMESPACE = field_path("metadata", "namespace")


def _not_supported(label: str) -> str:
    return f"field label not supported: {label}"


def _not_known(label: str) -> str:
    return (
        f"{go_quote(label)} is not a known field selector: only "
        f'"metadata.name", "metadata.namespace"'
    )


@dataclass(frozen=True)
class FieldTable:
    """
    The fields one kind can be selected by: kube-apiserver's field label conversion
    function for the kind and the selectable field set its storage computes.

    :ivar fields: each accepted field label and how to read it from an object.
    :ivar aliases: old labels accepted in place of a field (pods' ``spec.host``).
    :ivar unsupported: the error message for any other label.
    """

    fields: Mapping[str, FieldGetter]
    aliases: Mapping[str, str] = field(default_factory=dict)
    unsupported: Callable[[str], str] = _not_supported

    def convert(self, label: str) -> str:
        """
        The canonical field for a label.

        :raises UnsupportedFieldError: if the kind cannot be selected by it.
        """
        label = self.aliases.get(label, label)
        if label not in self.fields:
            raise UnsupportedFieldError(self.unsupported(label))
        return label

    def value(self, obj: Mapping[str, Any], label: str) -> str:
        """The value a selector on ``label`` compares for ``obj``."""
        return self.fields[label](obj)


#: Kinds without a conversion function of their own (ConfigMap, Deployment, Lease, ...):
#: ``runtime.DefaultMetaV1FieldSelectorConversion``.
DEFAULT_FIELD_TABLE = FieldTable(
    {"metadata.name": NAME, "metadata.namespace": NAMESPACE}, unsupported=_not_known
)


def custom_resource_field_table(
    namespaced: bool, selectable_fields: Iterable[str] = ()
) -> FieldTable:
    """
    The fields of a custom resource: ``metadata.name``, ``metadata.namespace`` when it is
    namespaced, and the JSON paths its CRD version lists under ``selectableFields``
    (``.spec.color`` is selected as ``spec.color``).
    """
    fields: dict[str, FieldGetter] = {"metadata.name": NAME}
    if namespaced:
        fields["metadata.namespace"] = NAMESPACE
    for json_path in selectable_fields:
        label = json_path.lstrip(".")
        fields[label] = field_path(*label.split("."))
    return FieldTable(fields)


@dataclass(frozen=True)
class FieldRequirement:
    """One ``field=value`` (or ``field!=value``) term of a field selector."""

    field: str
    value: str
    negated: bool = False


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector for one kind: the AND of its requirements."""

    requirements: tuple[FieldRequirement, ...] = ()
    table: FieldTable = DEFAULT_FIELD_TABLE

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object is selected."""
        for requirement in self.requirements:
            equal = self.table.value(obj, requirement.field) == requirement.value
            if equal == requirement.negated:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.requirements

    def requires_exact(self, field_name: str) -> str | None:
        """The value a field must equal, if the selector pins it (``metadata.name`` for a
        ``kubectl delete`` wait, ``spec.nodeName`` for a kubelet)."""
        for requirement in self.requirements:
            if requirement.field == field_name and not requirement.negated:
                return requirement.value
        return None

    def __str__(self) -> str:
        return ",".join(
            f"{r.field}{'!=' if r.negated else '='}{escape_field_value(r.value)}"
            for r in self.requirements
        )


def escape_field_value(value: str) -> str:
    """Escape ``\\``, ``,`` and ``=`` in a field selector value (``fields.EscapeValue``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_terms(text: str) -> list[str]:
    # Commas split terms unless backslash-escaped; the escapes stay in the term.
    if not text:
        return []
    terms: list[str] = []
    start = 0
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    # The first operator wins; "!=" and "==" are tried before "=" at each position.
    for index in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, index):
                return term[:index], operator, term[index + len(operator) :]
    return None


def _unescape(value: str) -> str:
    if not any(char in value for char in "\\,="):
        return value
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise FieldSelectorError(
                    f"invalid field selector: invalid escape sequence: \\{char}"
                )
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise FieldSelectorError(
                f"invalid field selector: unescaped character in value: {char}"
            )
        else:
            out.append(char)
    if escaped:
        raise FieldSelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(text: str, table: FieldTable = DEFAULT_FIELD_TABLE) -> FieldSelector:
    """
    Parse a ``fieldSelector`` query value for objects of the kind whose fields
    C{table} declares: terms ``field=value``, ``field==value`` or ``field!=value``,
    comma-separated, values escaped with ``\\``.  The empty string selects everything.

    :raises FieldSelectorError: if the text does not parse.
    :raises UnsupportedFieldError: if a term names a field the kind does not support.
    """
    parsed: list[tuple[str, str, bool]] = []
    # fields.ParseSelector sorts the raw terms, so errors surface in that order.
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        split = _split_term(term)
        if split is None:
            raise FieldSelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        label, operator, raw_value = split
        parsed.append((label, _unescape(raw_value), operator == "!="))
    requirements = tuple(
        FieldRequirement(table.convert(label), value, negated) for label, value, negated in parsed
    )
    return FieldSelector(requirements, table)


def selection(
    labels_text: str, fields_text: str, table: FieldTable = DEFAULT_FIELD_TABLE
) -> Callable[[Mapping[str, Any]], bool] | None:
    """
    What a ``labelSelector`` and a ``fieldSelector`` select together, as one
    predicate over objects (None when both are empty: everything).

    :raises SelectorError: if either does not parse, in kube-apiserver's words.
    """
    if not labels_text and not fields_text:
        return None
    labels = parse_label_selector(labels_text) if labels_text else None
    fields = parse_field_selector(fields_text, table) if fields_text else None

    def selected(obj: Mapping[str, Any]) -> bool:
        if labels is not None and not labels.matches(obj["metadata"].get("labels") or {}):
            return False
        return fields is None or fields.matches(obj)

    return selected
