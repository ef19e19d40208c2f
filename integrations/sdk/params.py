"""Declared parameters of a plugin and their validation.

Every per-request parameter a plugin accepts is declared once as a ``ParamSpec``. The same declaration drives
admission-time validation (a ``ValueError`` naming the parameter, which vLLM turns into HTTP 400), the defaults the
plugin core receives, ``declab list --json`` and the docs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

_MISSING = object()


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: type  # int, float, str or bool
    default: Any = _MISSING  # _MISSING = required
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int | None = None  # for strings
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def validate(self, value: Any, *, prefix: str = "declab") -> Any:
        """Return ``value`` coerced to ``kind``; raise ``ValueError`` naming ``prefix.name`` if it is invalid."""
        where = f"{prefix}.{self.name}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be a boolean, got {value!r}")
        elif self.kind is int:
            # JSON/OpenAI clients may send 3.0 for 3; bool is an int subclass and is not accepted.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()))):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, got {value!r}")
            value = float(value)
        elif self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{where} must be a string, got {type(value).__name__}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate: tokenizers raise TypeError on it (an HTTP 500)
                raise ValueError(f"{where} is not valid text: {e.reason} at position {e.start}") from None
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"{where} is longer than {self.max_length} characters")
        else:  # pragma: no cover - declaration error
            raise TypeError(f"unsupported parameter kind {self.kind!r} for {where}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.low is not None and value < self.low:
            raise ValueError(f"{where} must be >= {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{where} must be <= {self.high}, got {value!r}")
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind.__name__, "doc": self.doc}
        out["required"] = self.required
        if not self.required:
            out["default"] = self.default
        if self.low is not None or self.high is not None:
            out["range"] = [self.low, self.high]
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


def resolve_params(
    specs: tuple[ParamSpec, ...], given: Mapping[str, Any], *, prefix: str = "declab", ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate ``given`` against ``specs`` and fill defaults. Unknown keys are an error naming the key."""
    known = {s.name: s for s in specs}
    for key in given:
        if key not in known and key not in ignore:
            alike = [name for name in known if isinstance(key, str) and name.lower() == key.lower()]
            hint = f"did you mean {prefix}.{alike[0]}? " if alike else ""
            raise ValueError(f"{prefix}.{key} is not a parameter of this method ({hint}known: {sorted(known)})")
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name in given:
            out[spec.name] = spec.validate(given[spec.name], prefix=prefix)
        elif spec.required:
            raise ValueError(f"{prefix}.{spec.name} is required")
        else:
            out[spec.name] = spec.default
    return out
