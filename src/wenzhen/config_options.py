"""Command-line options generated from the typed config models, so a flag and its config key can never disagree.

A command lists which config keys it exposes (`ConfigOption`: the dotted key, and a flag name where the key's own
name would read badly); `add_config_options` reads each key's field in the model and builds the option from it:
its type (numbers, choices of a `Literal`, `--x/--no-x` for booleans, YAML values for mixed types such as
`int | 'auto'`), its help (the field's description, the key and its default). The parsed values come back as
dotted overrides (`config_overrides`) that the config loader lays over the YAML file before validating, so a bad
value is reported like a bad YAML value, naming the key. The same field walkers write docs/config-reference.md
(`wenzhen.config_reference`).

Kept free of torch imports: `wenzhen data ...` builds its parser without paying for torch.
"""

import argparse
import json
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from wenzhen.config import validate_config
from wenzhen.errors import ConfigError

# Prefix of the argparse destinations of generated options (the rest is the dotted config key).
DEST_PREFIX = "config:"
REQUIRED = object()
M = TypeVar("M", bound=BaseModel)


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds directly (`Foo` or `Foo | None`), whose keys are its own options/rows."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def type_name(annotation: Any) -> str:
    """A short readable type: `int | None`, `list[str]`, `'nf4' | 'fp4'`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in get_args(annotation))
    if str(origin).endswith("Literal"):
        return " | ".join(repr(arg) for arg in get_args(annotation))
    if origin is not None:
        inner = ", ".join(type_name(arg) for arg in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def field_default(field: FieldInfo) -> Any:
    """A field's default value (factories called), or REQUIRED."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return REQUIRED
    return field.get_default(call_default_factory=True)


def value_text(value: Any) -> str:
    """A default as YAML would write it (`null`, `true`, numbers, JSON for lists), or `required`."""
    if value is REQUIRED:
        return "**required**"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def field_at(model: type[BaseModel], key: str) -> FieldInfo:
    """The field of the dotted `key` in `model` (`training_args.max_steps`), through nested sections."""
    *sections, name = key.split(".")
    owner: type[BaseModel] | None = model
    for section in sections:
        field = owner.model_fields.get(section) if owner is not None else None
        owner = nested_model(field.annotation) if field is not None else None
    if owner is None or name not in owner.model_fields:
        raise KeyError(f"{model.__name__} has no key {key}")
    return owner.model_fields[name]


@dataclass(frozen=True)
class ConfigOption:
    """A config key offered on the command line.

    `flag`: the option's name (default: `--` and the key's last part with dashes); `sets`: make it a flag without a
    value that sets the key to this value (`--cpu` sets `training_args.use_cpu` to true); `help`: replaces the
    field's description where the command needs other words; `choices`: the allowed values where a registry, not
    the field's type, knows them (the data readers).
    """

    key: str
    flag: str | None = None
    sets: Any = None
    help: str | None = None
    choices: Sequence[str] | None = None

    def name(self) -> str:
        return self.flag or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")


def yaml_value(text: str) -> Any:
    """An option value read as YAML, as the same value in the config file would be (`auto`, `8192`, `null`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value ({exc})") from None


def value_kind(annotation: Any, key: str) -> dict[str, Any]:
    """argparse keywords for a field's type: a plain type, choices of a Literal, a boolean switch, or YAML."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if str(get_origin(annotation)).endswith("Literal") and all(
        isinstance(a, str) for a in get_args(annotation)
    ):
        return {"choices": list(get_args(annotation))}
    metavars = {int: "N", float: "X", str: key.rsplit(".", 1)[-1].upper()}
    if str in args:
        annotation = str  # a path or a name; the other forms (a mapping, a list) belong in the YAML file
    if annotation in metavars:
        return {"type": annotation, "metavar": metavars[annotation]}
    # Mixed types (`int | 'auto'`, `bool | 'auto'`): read as YAML, as the file would be, and validated with it.
    shown = type_name(annotation).replace(" ", "").replace("'", "").replace("bool", "true|false")
    return {"type": yaml_value, "metavar": shown.replace("int", "N").replace("float", "X")}


def option_help(option: ConfigOption, field: FieldInfo) -> str:
    """The field's description (or the option's own words), then the key it sets and the key's default."""
    text = option.help or field.description or ""
    default = field_default(field)
    shown = f"; default {value_text(default)}" if default is not REQUIRED else ""
    return f"{text} ({option.key}{shown})" if text else f"{option.key}{shown}"


def add_config_options(
    group: argparse._ActionsContainer, model: type[BaseModel], options: Sequence[ConfigOption]
) -> None:
    """Add one option per `options` entry, typed and explained by the field of its key in `model`."""
    for option in options:
        field = field_at(model, option.key)
        dest = DEST_PREFIX + option.key
        help_text = option_help(option, field)
        if option.sets is not None:
            group.add_argument(
                option.name(),
                dest=dest,
                action="store_const",
                const=option.sets,
                default=None,
                help=help_text,
            )
            continue
        kind = value_kind(field.annotation, option.key)
        if option.choices is not None:
            kind = {"choices": list(option.choices)}
        group.add_argument(option.name(), dest=dest, default=None, help=help_text, **kind)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generated options given on the command line, as {dotted key: value}."""
    return {
        dest[len(DEST_PREFIX) :]: value
        for dest, value in vars(args).items()
        if dest.startswith(DEST_PREFIX) and value is not None
    }


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating the sections on the way."""
    *sections, key = dotted.split(".")
    node = data
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {section} is not a section")
        node = child
    node[key] = value


def with_overrides(config: M, overrides: dict[str, Any], source: str) -> M:
    """`config` (a validated model) with dotted `overrides` laid over it, validated again as a whole."""
    if not overrides:
        return config
    data = config.model_dump(exclude_unset=True)
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return validate_config(type(config), data, source=f"{source} (with command-line overrides)")
