"""JSON round-trip shared by the typed config dataclasses."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from compressor.errors import ConfigError

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Base of frozen config dataclasses: ``to_dict()`` / ``from_dict()``.

    ``from_dict`` refuses unknown and missing keys with a ConfigError naming
    them, so a typo in a JSON config never passes silently.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name} expects a mapping, got {type(data).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = {f.name for f in fields}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {sorted(known)}")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"{name} is missing required key(s): {', '.join(missing)}")
        return cls(**dict(data))
