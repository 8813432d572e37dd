"""
Label selectors, parsed and matched the way Kubernetes does it: the query
string form (``app=web,tier in (a,b)``) and the ``LabelSelector`` objects of
specs (``matchLabels``, ``matchExpressions``).

Pure functions.  The grammar, the order in which errors are found and the
wording of every error follow ``k8s.io/apimachinery`` (``labels``,
``util/validation``), so that a client sees kube-apiserver's ``400
BadRequest`` message.  Both halves use them: the API server for
``labelSelector``, controllers for the selectors in specs.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Errors


class SelectorError(ValueError):
    """
    A selector the API rejects with ``400 BadRequest``; ``str()`` is the message
    kube-apiserver sends in the Status.
    """

    code = 400

    @property
    def message(self) -> str:
        return str(self)


class LabelSelectorError(SelectorError):
    """A label selector (query string or ``LabelSelector`` object) that does not parse."""


# Validation of label keys and values (k8s.io/apimachinery/pkg/util/validation)

_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_LABEL_VALUE_FMT = f"({_QUALIFIED_NAME_FMT})?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, "
    "'-', '_' or '.', and must start and end with an alphanumeric character"
)
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_INT64_RE = re.compile(r"[+-]?[0-9]+")


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    # validation.RegexError: the examples are joined with ", or " after a "', " each.
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def label_key_errors(key: str) -> list[str]:
    """
    What is wrong with a label key (``validation.IsQualifiedName``), in kube-apiserver's
    words; empty if it is valid.
    """
    errors: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errors.append("prefix part " + _max_len_error(253))
            if not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
                errors.append(
                    "prefix part "
                    + _regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com")
                )
    else:
        return [
            "a qualified name "
            + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + _max_len_error(63))
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        errors.append(
            "name part "
            + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errors


def label_value_errors(value: str) -> list[str]:
    """What is wrong with a label value (``validation.IsValidLabelValue``); empty if valid."""
    errors: list[str] = []
    if len(value) > 63:
        errors.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errors.append(
            _regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345")
        )
    return errors


_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character"
)
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL_FMT)


def dns_subdomain_errors(value: str) -> list[str]:
    """What is wrong with a DNS-1123 subdomain (``validation.IsDNS1123Subdomain``)."""
    errors = [_max_len_error(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errors.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def dns_label_errors(value: str) -> list[str]:
    """What is wrong with a DNS-1123 label (``validation.IsDNS1123Label``)."""
    errors = [_max_len_error(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL_RE.fullmatch(value):
        errors.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errors


def dns1035_label_errors(value: str) -> list[str]:
    """What is wrong with a DNS-1035 label (``validation.IsDNS1035Label``)."""
    errors = [_max_len_error(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL_RE.fullmatch(value):
        errors.append(_regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def go_quote(text: str) -> str:
    # Go's %q, near enough for the printable strings selectors carry.
    return json.dumps(text, ensure_ascii=False)


def _go_string_slice(values: Sequence[str]) -> str:
    # Go's %#v of a []string, as field.Invalid prints a value list.
    return "[]string{" + ", ".join(go_quote(v) for v in values) + "}"


def _invalid(path: str, value: str, detail: str) -> str:
    """A ``field.Invalid`` error's text."""
    return f"{path}: Invalid value: {value}: {detail}"


def aggregate(messages: Sequence[str]) -> str:
    """``utilerrors.Aggregate``: one message alone, several in brackets, duplicates once."""
    unique = list(dict.fromkeys(messages))
    if len(unique) == 1:
        return unique[0]
    return "[" + ", ".join(unique) + "]"


# Label selectors


class Operator(enum.Enum):
    """A label requirement's operator, valued as apimachinery's ``selection.Operator``."""

    IN = "in"
    NOT_IN = "notin"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


_BINARY_OPERATORS = ", ".join(
    op.value
    for op in (
        Operator.IN,
        Operator.NOT_IN,
        Operator.EQUALS,
        Operator.DOUBLE_EQUALS,
        Operator.NOT_EQUALS,
        Operator.GREATER_THAN,
        Operator.LESS_THAN,
    )
)


def _parse_int64(text: str) -> int | None:
    if not _INT64_RE.fullmatch(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


@dataclass(frozen=True)
class Requirement:
    """One ``key <operator> values`` term of a label selector."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    @classmethod
    def create(cls, key: str, operator: Operator, values: Sequence[str]) -> Requirement:
        """
        Validate like ``labels.NewRequirement``.

        :raises LabelSelectorError: with the aggregated validation errors.
        """
        errors: list[str] = []
        key_problems = label_key_errors(key)
        if key_problems:
            errors.append(_invalid("key", go_quote(key), "; ".join(key_problems)))
        if operator in (Operator.IN, Operator.NOT_IN):
            if not values:
                errors.append(
                    _invalid(
                        "values",
                        _go_string_slice(values),
                        "for 'in', 'notin' operators, values set can't be empty",
                    )
                )
        elif operator in (Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.NOT_EQUALS):
            if len(values) != 1:
                errors.append(
                    _invalid(
                        "values",
                        _go_string_slice(values),
                        "exact-match compatibility requires one single value",
                    )
                )
        elif operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
            if values:
                errors.append(
                    _invalid(
                        "values",
                        _go_string_slice(values),
                        "values set must be empty for exists and does not exist",
                    )
                )
        else:
            if len(values) != 1:
                errors.append(
                    _invalid(
                        "values",
                        _go_string_slice(values),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    )
                )
            for index, value in enumerate(values):
                if _parse_int64(value) is None:
                    errors.append(
                        _invalid(
                            f"values[{index}]",
                            go_quote(value),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        )
                    )
        for index, value in enumerate(values):
            value_problems = label_value_errors(value)
            if value_problems:
                errors.append(
                    _invalid(f"values[{index}][{key}]", go_quote(value), "; ".join(value_problems))
                )
        if errors:
            raise LabelSelectorError(aggregate(errors))
        return cls(key, operator, tuple(values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels satisfies this requirement."""
        op = self.operator
        if op in (Operator.IN, Operator.EQUALS, Operator.DOUBLE_EQUALS):
            return self.key in labels and labels[self.key] in self.values
        if op in (Operator.NOT_IN, Operator.NOT_EQUALS):
            return self.key not in labels or labels[self.key] not in self.values
        if op is Operator.EXISTS:
            return self.key in labels
        if op is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        if self.key not in labels or len(self.values) != 1:
            return False
        actual = _parse_int64(labels[self.key])
        wanted = _parse_int64(self.values[0])
        if actual is None or wanted is None:
            return False
        return actual > wanted if op is Operator.GREATER_THAN else actual < wanted

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return "!" + self.key
        values = self.values[0] if len(self.values) == 1 else ",".join(sorted(self.values))
        symbol = {
            Operator.EQUALS: "=",
            Operator.DOUBLE_EQUALS: "==",
            Operator.NOT_EQUALS: "!=",
            Operator.GREATER_THAN: ">",
            Operator.LESS_THAN: "<",
        }.get(op)
        if symbol is not None:
            return f"{self.key}{symbol}{values}"
        return f"{self.key} {op.value} ({values})"


@dataclass(frozen=True)
class LabelSelector:
    """
    A parsed label selector: the AND of its requirements, sorted by key.

    :ivar nothing: the selector of a nil ``LabelSelector`` object, which matches nothing.
    """

    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is selected."""
        if self.nothing:
            return False
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        """Whether the selector selects everything."""
        return not self.nothing and not self.requirements

    def requires_exact(self, key: str) -> str | None:
        """The one value ``key`` must have, if the selector pins it (``RequiresExactMatch``)."""
        for requirement in self.requirements:
            if requirement.key == key:
                exact = (Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.IN)
                if requirement.operator in exact and len(requirement.values) == 1:
                    return requirement.values[0]
                return None
        return None

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


EVERYTHING = LabelSelector()
NOTHING = LabelSelector(nothing=True)


class _Token(enum.Enum):
    ERROR = enum.auto()
    END = enum.auto()
    CLOSE = enum.auto()
    COMMA = enum.auto()
    NOT = enum.auto()
    DOUBLE_EQUALS = enum.auto()
    EQUALS = enum.auto()
    GREATER = enum.auto()
    IDENTIFIER = enum.auto()
    IN = enum.auto()
    LESS = enum.auto()
    NOT_EQUALS = enum.auto()
    NOT_IN = enum.auto()
    OPEN = enum.auto()


_LITERAL_TOKENS = {
    ")": _Token.CLOSE,
    ",": _Token.COMMA,
    "!": _Token.NOT,
    "==": _Token.DOUBLE_EQUALS,
    "=": _Token.EQUALS,
    ">": _Token.GREATER,
    "in": _Token.IN,
    "<": _Token.LESS,
    "!=": _Token.NOT_EQUALS,
    "notin": _Token.NOT_IN,
    "(": _Token.OPEN,
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_OPERATOR_TOKENS = {
    _Token.IN: Operator.IN,
    _Token.EQUALS: Operator.EQUALS,
    _Token.DOUBLE_EQUALS: Operator.DOUBLE_EQUALS,
    _Token.GREATER: Operator.GREATER_THAN,
    _Token.LESS: Operator.LESS_THAN,
    _Token.NOT_IN: Operator.NOT_IN,
    _Token.NOT_EQUALS: Operator.NOT_EQUALS,
}


def _lex(text: str) -> list[tuple[_Token, str]]:
    """Split selector text into tokens, ending with END, as ``labels.Lexer`` does."""
    items: list[tuple[_Token, str]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos == len(text):
            items.append((_Token.END, ""))
            return items
        if text[pos] in _SPECIAL:
            # The longest run of symbols that still spells a token.
            found: tuple[_Token, str] | None = None
            buffer = ""
            while pos < len(text) and text[pos] in _SPECIAL:
                candidate = buffer + text[pos]
                token = _LITERAL_TOKENS.get(candidate)
                if token is not None:
                    found = (token, candidate)
                elif found is not None:
                    break
                buffer = candidate
                pos += 1
            items.append(found or (_Token.ERROR, f"error expected: keyword found '{buffer}'"))
            continue
        start = pos
        while pos < len(text) and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        items.append((_LITERAL_TOKENS.get(word, _Token.IDENTIFIER), word))


class _Parser:
    """A recursive-descent parser over the scanned tokens (``labels.Parser``)."""

    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.position = 0

    def _item(self, index: int, values: bool) -> tuple[_Token, str]:
        token, literal = self.items[index]
        # In value position the keywords "in" and "notin" are plain identifiers.
        if values and token in (_Token.IN, _Token.NOT_IN):
            token = _Token.IDENTIFIER
        return token, literal

    def lookahead(self, values: bool = True) -> tuple[_Token, str]:
        return self._item(self.position, values)

    def consume(self, values: bool = True) -> tuple[_Token, str]:
        self.position += 1
        return self._item(self.position - 1, values)

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            token, literal = self.lookahead()
            if token in (_Token.IDENTIFIER, _Token.NOT):
                try:
                    requirements.append(self.requirement())
                except LabelSelectorError as e:
                    raise LabelSelectorError(f"unable to parse requirement: {e}") from None
                token, literal = self.consume()
                if token is _Token.END:
                    return requirements
                if token is _Token.COMMA:
                    following, literal = self.lookahead()
                    if following not in (_Token.IDENTIFIER, _Token.NOT):
                        raise LabelSelectorError(
                            f"found '{literal}', expected: identifier after ','"
                        )
                    continue
                raise LabelSelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            if token is _Token.END:
                return requirements
            raise LabelSelectorError(
                f"found '{literal}', expected: !, identifier, or 'end of string'"
            )

    def requirement(self) -> Requirement:
        token, key = self.consume()
        negated = token is _Token.NOT
        if negated:
            token, key = self.consume()
        if token is not _Token.IDENTIFIER:
            raise LabelSelectorError(f"found '{key}', expected: identifier")
        problems = label_key_errors(key)
        if problems:
            raise LabelSelectorError(_invalid("<nil>", go_quote(key), "; ".join(problems)))
        if negated:
            return Requirement.create(key, Operator.DOES_NOT_EXIST, ())
        if self.lookahead()[0] in (_Token.END, _Token.COMMA):
            return Requirement.create(key, Operator.EXISTS, ())
        token, literal = self.consume(values=False)
        operator = _OPERATOR_TOKENS.get(token)
        if operator is None:
            raise LabelSelectorError(f"found '{literal}', expected: {_BINARY_OPERATORS}")
        if operator in (Operator.IN, Operator.NOT_IN):
            values = self.value_set()
        else:
            values = self.exact_value()
        return Requirement.create(key, operator, sorted(values))

    def value_set(self) -> set[str]:
        token, literal = self.consume()
        if token is not _Token.OPEN:
            raise LabelSelectorError(f"found '{literal}' expected: '('")
        token, literal = self.lookahead()
        if token in (_Token.IDENTIFIER, _Token.COMMA):
            values = self.identifiers()
            self.consume()  # the ")" that identifiers() stopped at
            return values
        if token is _Token.CLOSE:
            self.consume()
            return {""}
        raise LabelSelectorError(f"found '{literal}', expected: ',', ')' or identifier")

    def identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            token, literal = self.consume()
            if token is _Token.IDENTIFIER:
                values.add(literal)
                following, literal = self.lookahead()
                if following is _Token.COMMA:
                    continue
                if following is _Token.CLOSE:
                    return values
                raise LabelSelectorError(f"found '{literal}', expected: ',' or ')'")
            if token is _Token.COMMA:
                # Empty elements, as in "(,a" or "a,,b" or "a,)", are the empty value.
                if not values:
                    values.add("")
                if self.lookahead()[0] in (_Token.CLOSE, _Token.COMMA):
                    values.add("")
                if self.lookahead()[0] is _Token.CLOSE:
                    return values
                continue
            raise LabelSelectorError(f"found '{literal}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        if self.lookahead()[0] in (_Token.END, _Token.COMMA):
            return {""}
        token, literal = self.consume()
        if token is _Token.IDENTIFIER:
            return {literal}
        raise LabelSelectorError(f"found '{literal}', expected: identifier")


def parse_label_selector(text: str) -> LabelSelector:
    """
    Parse a ``labelSelector`` query value (``labels.Parse``): ``a=b``, ``a==b``, ``a!=b``,
    ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``, ``a>1``, ``a<1``, comma-separated.
    The empty string selects everything.

    :raises LabelSelectorError: with kube-apiserver's message.
    """
    requirements = _Parser(text).parse()
    return LabelSelector(tuple(sorted(requirements, key=lambda r: r.key)))


_EXPRESSION_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def label_selector_from_spec(spec: Mapping[str, Any] | None) -> LabelSelector:
    """
    Turn a ``LabelSelector`` object (``matchLabels`` and ``matchExpressions``, as in a
    Deployment's ``spec.selector``) into a selector (``metav1.LabelSelectorAsSelector``).
    ``None`` selects nothing; an empty object selects everything.

    :raises LabelSelectorError: for an unknown operator or an invalid key or value.
    """
    if spec is None:
        return NOTHING
    match_labels: Mapping[str, Any] = spec.get("matchLabels") or {}
    expressions: Sequence[Mapping[str, Any]] = spec.get("matchExpressions") or ()
    if not match_labels and not expressions:
        return EVERYTHING
    requirements = [
        Requirement.create(key, Operator.EQUALS, [str(value)])
        for key, value in match_labels.items()
    ]
    for expression in expressions:
        name = expression.get("operator", "")
        operator = _EXPRESSION_OPERATORS.get(name)
        if operator is None:
            raise LabelSelectorError(
                f"{go_quote(str(name))} is not a valid label selector operator"
            )
        values = [str(value) for value in expression.get("values") or ()]
        requirements.append(Requirement.create(str(expression.get("key", "")), operator, values))
    return LabelSelector(tuple(sorted(requirements, key=lambda r: r.key)))


def spec_matches(spec: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """
    Whether the ``LabelSelector`` object C{spec} selects C{labels}, as
    L{label_selector_from_spec} would say: without building the selector
    when C{spec} has only valid ``matchLabels`` (every workload's usual one).

    :raises LabelSelectorError: as L{label_selector_from_spec} does.
    """
    match_labels = spec.get("matchLabels")
    if (
        not spec.get("matchExpressions")
        and match_labels.__class__ is dict
        and labels.__class__ is dict
        and all(
            key.__class__ is str
            and value.__class__ is str
            and not label_key_errors(key)
            and not label_value_errors(value)
            for key, value in match_labels.items()
        )
    ):
        return all(labels.get(key) == value for key, value in match_labels.items())
    return label_selector_from_spec(spec).matches(labels)


def format_label_selector(spec: Mapping[str, Any] | None) -> str:
    """A ``LabelSelector`` object as the printers show it (``metav1.FormatLabelSelector``)."""
    try:
        text = str(label_selector_from_spec(spec))
    except LabelSelectorError:
        return "<error>"
    return text or "<none>"


def format_labels(labels: Mapping[str, str] | None) -> str:
    """A label map as ``k=v`` pairs sorted by key, or ``<none>`` (``labels.FormatLabels``)."""
    labels = labels or {}
    text = ",".join(f"{key}={labels[key]}" for key in sorted(labels))
    return text or "<none>"
