"""Typed configuration: nested pydantic models that forbid unknown keys, validated once when loaded.

Every stage's config derives from `StrictModel`. `load_yaml_config` turns pydantic's errors into one message per
problem that names the key's path and, for an unknown key, the closest valid key ("did you mean ...").
"""

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from wenzhen.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk `path` through nested model fields and return the model that owns the last key, if any."""
    current: type[BaseModel] | None = model
    for key in path:
        if current is None or not isinstance(key, str) or key not in current.model_fields:
            return current if current is not None and isinstance(key, str) else None
        annotation = current.model_fields[key].annotation
        current = _first_model(annotation)
    return current


def _first_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Foo`, `Foo | None` or `list[Foo]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: `source: key.path: what is wrong (did you mean 'x'?)`."""
    lines = []
    for error in exc.errors():
        location = tuple(error["loc"])
        dotted = ".".join(str(part) for part in location) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            owner = _model_at(model, location[:-1])
            choices = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(location[-1]), choices, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(choices)}"
            message = f"unknown key{hint}"
        elif "input" in error and error["type"] not in ("missing",):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"{source}: {dotted}: {message}")
    return "\n".join(lines)


def validate_config(model: type[M], data: Any, source: str = "config") -> M:
    """Validate plain data into `model`, raising ConfigError with readable, key-named messages."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, source)) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, with a clear error for a missing or malformed file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass the path of a YAML config")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None


def load_yaml_config(model: type[M], path: str | Path) -> M:
    """Read and validate a YAML config file into `model`."""
    return validate_config(model, read_yaml(path), source=str(path))
