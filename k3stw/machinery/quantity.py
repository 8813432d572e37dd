"""
Kubernetes quantities (``resource.Quantity``: ``100m``, ``1.5Gi``, ``1e3``):
parsed exactly, compared, and printed in the canonical form kube-apiserver's
messages show (``0.5`` is ``500m``, ``1024Mi`` is ``1Gi``).
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from fractions import Fraction

#: The pattern every quantity matches, as kube-apiserver's errors quote it.
QUANTITY_PATTERN = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
FORMAT_WRONG = f"quantities must match the regular expression '{QUANTITY_PATTERN}'"
NUMERIC = "unable to parse numeric part of quantity"
SUFFIX = "unable to parse quantity's suffix"

_SPLIT = re.compile(QUANTITY_PATTERN)
_NUMBER = re.compile(r"[+-]?([0-9]*)(\.[0-9]*)?")
_EXPONENT = re.compile(r"[eE]([-+]?[0-9]+)")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_BINARY_SUFFIX = {power: suffix for suffix, power in _BINARY.items()}


class QuantityError(ValueError):
    """Not a quantity; the message is kube-apiserver's."""


class Quantity:
    """
    An exact quantity, and its notation: ``binary``, ``decimal`` or ``exponent``.
    Shared between its parses: never changed.
    """

    __slots__ = ("notation", "value")

    def __init__(self, value: Fraction, notation: str) -> None:
        self.value = value
        self.notation = notation

    def __str__(self) -> str:
        return canonical(self)


#: Every well-formed quantity, matched at once (the common case of a check).
_WELL_FORMED = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?"
)


def quantity_error(given: object) -> str | None:
    """What kube-apiserver's decoder says of a quantity's JSON value; None if it is one."""
    if isinstance(given, str) and _WELL_FORMED.fullmatch(given.strip()):
        return None
    try:
        parse_quantity(given)
    except QuantityError as e:
        return str(e)
    return None


def parse_quantity(given: object) -> Quantity:
    """
    A quantity from its JSON value (a string, or a number as JSON wrote it).

    :raises QuantityError: in kube-apiserver's words.
    """
    return _parsed((given if isinstance(given, str) else _number_text(given)).strip())


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Quantity:
    """A quantity's text, parsed once: the same few (``100m``, ``128Mi``) recur in every pod."""
    if not text or not _SPLIT.match(text):
        raise QuantityError(FORMAT_WRONG)
    number = _NUMBER.match(text)
    assert number is not None
    whole, fraction = number.group(1), number.group(2) or ""
    if not whole and len(fraction) <= 1:
        raise QuantityError(NUMERIC)
    suffix = text[number.end() :]
    numerator = int(whole + fraction[1:] or "0")
    value = Fraction(-numerator if text[0] == "-" else numerator, 10 ** max(len(fraction) - 1, 0))
    if suffix in _BINARY:
        return Quantity(value * 1024 ** _BINARY[suffix], "binary")
    if suffix in _DECIMAL:
        power = _DECIMAL[suffix]
        scale = 10**power if power >= 0 else Fraction(1, 10**-power)
        return Quantity(value * scale, "decimal")
    exponent = _EXPONENT.fullmatch(suffix)
    if exponent is None:
        raise QuantityError(SUFFIX)
    return Quantity(value * Fraction(10) ** int(exponent.group(1)), "exponent")


def _number_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def canonical(quantity: Quantity) -> str:
    """The quantity as kube-apiserver prints it (``Quantity.String``), rounded up to nano units."""
    value = quantity.value
    sign = "-" if value < 0 else ""
    value = abs(value)
    nanos = -(-value * 10**9 // 1)  # rounded up, as kube-apiserver rounds
    if nanos == 0:
        return "0"
    notation = quantity.notation
    if notation == "binary" and (value < 1024 or nanos % 10**9):
        notation = "decimal"
    if notation == "binary":
        amount, power = int(value), 0
        while amount % 1024 == 0 and power < 6:
            amount, power = amount // 1024, power + 1
        return f"{sign}{amount}{_BINARY_SUFFIX.get(power, '')}"
    mantissa, exponent = int(nanos), -9
    while mantissa % 10 == 0:
        mantissa, exponent = mantissa // 10, exponent + 1
    extra = exponent % 3
    mantissa, exponent = mantissa * 10**extra, exponent - extra
    if notation == "decimal" and exponent in _DECIMAL_SUFFIX:
        return f"{sign}{mantissa}{_DECIMAL_SUFFIX[exponent]}"
    return f"{sign}{mantissa}e{exponent}" if exponent else f"{sign}{mantissa}"


def go_float(value: float) -> str:
    """
    A float64 as Go formats it shortest (``strconv.FormatFloat(v, 'g', -1, 64)``,
    as Prometheus and kubectl's JSONPath write it): %e form outside [1e-4, 1e6).
    """
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    power = int(exponent) + len(digits) - 1
    minus = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    if power >= len(digits) - 1:
        return minus + digits + "0" * (power - len(digits) + 1)
    if power >= 0:
        return minus + digits[: power + 1] + "." + digits[power + 1 :]
    return minus + "0." + "0" * (-power - 1) + digits
