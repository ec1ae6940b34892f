"""Resource quantities (ace.md §Resource Isolators): ``128974848``, ``125952Ki``, ``123Mi``,
``0.3``, ``300m``, ``1e3``, with an optional sign.

The value is kept exactly (a Decimal); ``value`` and ``milli_value`` give the integer base units
the spec asks implementations to work in, rounded up so a limit is never tightened by rounding.
The spec lists the metric suffix ``K`` while the reference library only takes ``k``: both are
accepted here, as the spec text says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, localcontext

from ._json import expect_str
from .errors import ValidationError, quote

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?\d+|[numkKMGTPE]?)"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "K": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}  # fmt: skip


@dataclass(frozen=True)
class Quantity:
    text: str
    amount: Decimal = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str, path: str = "") -> Quantity:
        match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(
                path,
                f"{quote(text)} is not a quantity: expected a number with an optional suffix "
                "(m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e6)",
            )
        try:
            amount = _amount(match["number"], match["suffix"])
        except ArithmeticError:  # an exponent beyond what a Decimal holds
            raise ValidationError(path, f"{quote(text)} is out of range") from None
        return cls(text, amount)

    @classmethod
    def from_json(cls, value: object, path: str) -> Quantity:
        return cls.parse(expect_str(value, path), path)

    def to_json(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    @property
    def value(self) -> int:
        """The quantity in whole base units (bytes, cores, ...), rounded up."""
        return math.ceil(self.amount)

    @property
    def milli_value(self) -> int:
        """The quantity in thousandths of the base unit (millicores), rounded up."""
        return math.ceil(self.amount * 1000)


def _amount(number: str, suffix: str) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 80
        base = Decimal(number)
        if suffix in _BINARY:
            return base * (Decimal(1024) ** _BINARY[suffix])
        if suffix[:1] in ("e", "E") and len(suffix) > 1:
            return base.scaleb(int(suffix[1:]))
        return base.scaleb(_DECIMAL[suffix])
