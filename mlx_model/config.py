"""Config helpers shared by every tower: hub `config.json` keys in, unknown keys dropped."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


class ModelConfigError(ValueError):
    """A checkpoint's config.json cannot describe a model we can build."""


def dataclass_from_dict(cls: type[T], params: dict[str, Any]) -> T:
    """Build dataclass `cls` from a config dict, keeping only the keys it declares."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in params.items() if k in names})
