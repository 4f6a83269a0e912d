"""Validation of YAML files against pydantic models, with one-line errors that name the field.

Shared by lab.yaml and the scenario files: `lab.yaml: nodes[1].address: ... ; fix`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class FieldError(ValueError):
    """Raised inside a validator to name a field other than the one being validated."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def read_yaml(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; {hint}")
    try:
        return yaml.safe_load(_utf8_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8") from None


def validate(model: type[M], data: Any, path: Path | str) -> M:
    """The model, or a ConfigError that starts with `path` (a file, or a file and where in it)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {_describe(model, errors[0])}{more}") from None


def _where(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(model: type[BaseModel], error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    inner = (error.get("ctx") or {}).get("error")
    if isinstance(inner, FieldError):
        return f"{_where(inner.loc)}: {inner.message}"
    if error["type"] == "extra_forbidden":
        parent = loc[:-1]
        return (
            f"{_where(parent)}: unknown key '{loc[-1]}'; "
            f"remove it or check its spelling (allowed: {', '.join(_keys(model, parent))})"
        )
    if error["type"] == "missing":
        return f"{_where(loc)}: required but missing; add it"
    message = str(inner) if isinstance(inner, ValueError) else error["msg"]
    value = error.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else ""
    return f"{_where(loc)}: {message}{shown}"


def _keys(model: Any, loc: tuple[str | int, ...]) -> list[str]:
    """The keys a mapping at `loc` may have, following the model's field annotations."""
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        while not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            annotation = next(a for a in annotation.__args__ if a is not type(None))
        model = annotation
    return [name for name, field in model.model_fields.items() if not field.exclude]
