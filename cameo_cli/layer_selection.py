"""Which layers: one syntax for `cameo train --layer`, `cameo diagnose --layers` and the
recipe's `alignment.layer`, parsed by `LayerSelection.parse` and checked against a backbone by
`check_layer_range` (the one message for a layer that does not exist).

A selection is the backbone's default (null), layer numbers and ranges (`10`, `[10, 12]`,
`"3,8-10"`), every layer (`all`), or diagnose's recommendation (`auto`: its best layer,
`auto:K`: its K best).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from cameo_cli.errors import CameoError

# A recipe stores a selection as YAML can: null, a number, a list of numbers or the text.
LayerChoice = int | list[int] | str | None

SYNTAX = (
    "a layer number >= 0, a list of them or ranges (3,8-10) without repeats, "
    "'all', 'auto', 'auto:K' (K >= 1) or null (the backbone's default)"
)
_PART = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def check_layer_range(layer: int, backbone: str, count: int, default: int) -> None:
    """Raise the CameoError for a layer outside `backbone`'s `count` layers."""
    if not 0 <= layer < count:
        raise CameoError(
            f"layer {layer} is outside backbone '{backbone}' (valid: 0-{count - 1}), "
            f"default {default}"
        )


@dataclass(frozen=True)
class LayerSelection:
    """A parsed selection: at most one of `numbers`, `auto`, `every` is set; none: the
    backbone's default layer."""

    numbers: tuple[int, ...] = ()  # explicit layers, in the order given
    auto: int | None = None  # diagnose's K best recommended layers
    every: bool = False  # "all"

    @classmethod
    def parse(cls, value: LayerChoice) -> LayerSelection:
        """The selection written as `value` (a recipe value or command-line text); a
        ValueError saying what is expected otherwise (callers name where it came from)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls._parse_text(value)
        items = value if isinstance(value, list) else [value]
        if not items or any(isinstance(n, bool) or not isinstance(n, int) for n in items):
            raise ValueError(f"expected {SYNTAX}, got {value!r}")
        return cls._of_numbers(items, value)

    @classmethod
    def _parse_text(cls, text: str) -> LayerSelection:
        name, colon, count = text.strip().partition(":")
        if name == "all" and not colon:
            return cls(every=True)
        if name == "auto":
            if not colon:
                return cls(auto=1)
            if count.isdigit() and int(count) >= 1:
                return cls(auto=int(count))
        numbers: list[int] = []
        for part in text.split(","):
            match = _PART.fullmatch(part)
            if match is None:
                raise ValueError(f"expected {SYNTAX}, got {text!r}")
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise ValueError(f"range {part.strip()!r} runs backwards; expected {SYNTAX}")
            numbers.extend(range(first, last + 1))
        return cls._of_numbers(numbers, text)

    @classmethod
    def _of_numbers(cls, numbers: list[int], value: LayerChoice) -> LayerSelection:
        if any(n < 0 for n in numbers) or len(set(numbers)) != len(numbers):
            raise ValueError(f"expected {SYNTAX}, got {value!r}")
        return cls(numbers=tuple(numbers))

    @property
    def value(self) -> LayerChoice:
        """The selection as a recipe stores it (one number as an int)."""
        if self.every:
            return "all"
        if self.auto is not None:
            return "auto" if self.auto == 1 else f"auto:{self.auto}"
        if not self.numbers:
            return None
        return self.numbers[0] if len(self.numbers) == 1 else list(self.numbers)

    @property
    def count(self) -> int | None:
        """How many layers the selection names, when that is known before a backbone is."""
        if self.every:
            return None
        return self.auto if self.auto is not None else max(len(self.numbers), 1)

    def check(self, backbone: str, count: int, default: int) -> None:
        """Check the explicit numbers against a backbone of `count` layers."""
        for number in self.numbers:
            check_layer_range(number, backbone, count, default)

    def resolve(
        self, backbone: str, count: int, default: int, recommended: Callable[[int], list[int]]
    ) -> list[int]:
        """The layer numbers for a backbone of `count` layers; `recommended(K)` gives
        diagnose's K best (read only for `auto`)."""
        if self.every:
            return list(range(count))
        if self.auto is not None:
            numbers = list(recommended(self.auto))
        else:
            numbers = list(self.numbers) or [default]
        for number in numbers:
            check_layer_range(number, backbone, count, default)
        return numbers
