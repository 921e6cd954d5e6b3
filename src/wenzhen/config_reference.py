"""`docs/config-reference.md`, generated from the config models themselves so it can never drift from them.

Every YAML file a command accepts (`--config` or the training CONFIG) is one of the pydantic models below; this
module walks their fields (nested models become dotted keys; the walkers are shared with the command-line options
generated from the same fields, `wenzhen.config_options`) and writes one table per file kind: key, type,
default, description. `tests/test_config_reference.py` fails when the committed page differs from the output.

    python -m wenzhen.config_reference > docs/config-reference.md
"""

import json

from pydantic import BaseModel

from wenzhen.config_options import field_default, nested_model, type_name, value_text
from wenzhen.data.config import DataConfig
from wenzhen.data.pairs import PairsConfig
from wenzhen.demo import DemoConfig
from wenzhen.serve.config import ServingConfig
from wenzhen.train.config import TrainConfig

# (title, command that reads it, model, an example file in the repository)
DOCUMENTED: list[tuple[str, str, type[BaseModel], str]] = [
    ("Data preparation", "wenzhen data prepare INPUT... --out DIR --config FILE", DataConfig, "-"),
    ("Preference pairs", "wenzhen data pairs SFT_DIR MODEL --out DIR --config FILE", PairsConfig, "-"),
    (
        "Training",
        "wenzhen train DATA_DIR MODEL_DIR FILE",
        TrainConfig,
        "configs/lora.yaml, configs/ptuning_v2.yaml, configs/sft.yaml, configs/dpo.yaml, configs/orpo.yaml, "
        "configs/kto.yaml",
    ),
    (
        "Serving (API, web UI, chat, eval safety)",
        "wenzhen api|web|chat MODEL --config FILE, wenzhen eval safety ... --config FILE",
        ServingConfig,
        "-",
    ),
    ("Demo", "wenzhen demo --config FILE", DemoConfig, "configs/demo.yaml"),
]


def method_sections() -> list[tuple[str, str, type[BaseModel], str]]:
    """One table per settings model of the tuning methods registry (lora and qlora share theirs)."""
    from wenzhen.train.methods import METHODS

    owners: dict[type[BaseModel], list[str]] = {}
    for name, method in METHODS.items():
        if method.settings is not None:
            owners.setdefault(method.settings, []).append(name)
    return [
        (
            f"Settings of method {' / '.join(names)} (under `peft_config`)",
            "wenzhen train DATA_DIR MODEL_DIR FILE",
            model,
            "-",
        )
        for model, names in owners.items()
    ]


def rows(
    model: type[BaseModel], prefix: str = "", instance: BaseModel | None = None
) -> list[tuple[str, ...]]:
    """(dotted key, type, default, description) for every field, nested sections expanded after their key.

    Defaults come from `instance` where a parent section supplies its own (the demo's data section, say); a
    section holding a config documented in its own table shows only what it changes from that table.
    """
    documented = {entry[2] for entry in DOCUMENTED}
    result: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name) if instance is not None else field_default(field)
        child = nested_model(field.annotation)
        section_doc = (child.__doc__ or "").strip().splitlines()[0] if child and child.__doc__ else ""
        description = field.description or section_doc
        if child is None:
            result.append((key, type_name(field.annotation), value_text(value), description))
        elif child in documented:
            changes = (
                value.model_dump(mode="json", exclude_defaults=True) if isinstance(value, BaseModel) else {}
            )
            shown = json.dumps(changes, ensure_ascii=False) if changes else "its own defaults"
            result.append((key, f"{child.__name__} (table above)", shown, description))
        else:
            default = "(section)" if isinstance(value, BaseModel) else value_text(value)
            result.append((key, "section", default, description))
            result += rows(child, f"{key}.", value if isinstance(value, BaseModel) else None)
    return result


def examples_text(examples: str) -> str:
    """Where the shipped example files are, or that every key has a default."""
    if examples == "-":
        return "No file is shipped: every key has a default."
    return "Shipped: " + ", ".join(f"`{name.strip()}`" for name in examples.split(",")) + "."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole reference page."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python -m wenzhen.config_reference` (a test checks it is current);",
        "do not edit by hand. Every file is YAML; unknown keys are errors that name the closest valid key, and a",
        "nested key is written as a nested mapping (`training_args.learning_rate` is `learning_rate:` under",
        "`training_args:`). Command-line options of each command override the file.",
    ]
    for title, command, model, example in DOCUMENTED + method_sections():
        lines += [
            "",
            f"## {title}: `{model.__name__}`",
            "",
            f"Read by `{command}`. {examples_text(example)}",
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |"
            for key, kind, default, text in rows(model)
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
