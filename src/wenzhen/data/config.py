"""The typed configuration of `wenzhen data prepare` (also loadable from YAML with `--config`)."""

from typing import Literal

from pydantic import Field, model_validator

from wenzhen.config import StrictModel

PiiKind = Literal["phone", "id_card", "email", "url"]
PII_KINDS: tuple[PiiKind, ...] = ("phone", "id_card", "email", "url")


class AdsConfig(StrictModel):
    """Advertisement and boilerplate removal: the sentence containing a matching phrase is cut out."""

    enabled: bool = True
    use_defaults: bool = Field(True, description="apply the built-in pattern list (see docs/data.md)")
    patterns: list[str] = Field(default_factory=list, description="extra regular expressions to remove")


class PlaceholderConfig(StrictModel):
    """Questions such as '无' or '如题' that carry no content."""

    enabled: bool = True
    values: list[str] = Field(default_factory=list, description="extra placeholder strings")
    use_title: bool = Field(
        True, description="replace a placeholder question by the record's title when it has one"
    )


class PiiConfig(StrictModel):
    """Personal data masking: each match is replaced by a bracketed tag such as [电话]."""

    enabled: bool = True
    kinds: list[PiiKind] = Field(default_factory=lambda: list(PII_KINDS))


class CleaningConfig(StrictModel):
    """Every cleaning rule, each switchable; the report counts what each one did."""

    normalize: bool = Field(
        True, description="Unicode NFC, full-width letters/digits to ASCII, whitespace tidy"
    )
    strip_html: bool = True
    ads: AdsConfig = Field(default_factory=AdsConfig)
    placeholders: PlaceholderConfig = Field(default_factory=PlaceholderConfig)
    mask_pii: PiiConfig = Field(default_factory=PiiConfig)
    merge_turns: bool = Field(True, description="join consecutive turns by the same speaker")
    ending: Literal["trim", "drop"] = Field(
        "trim", description="a conversation ending on a user turn: trim the trailing user turns, or drop it"
    )


class LengthConfig(StrictModel):
    """Length limits, in tokens of `tokenizer` when one is given, else in characters."""

    tokenizer: str | None = Field(None, description="model directory whose tokenizer measures lengths")
    min_user: int = Field(2, ge=0)
    min_assistant: int = Field(2, ge=0)
    max_user: int | None = Field(None, ge=1)
    max_assistant: int | None = Field(None, ge=1)
    max_total: int | None = Field(
        4096, ge=1, description="user + assistant + system length of a conversation"
    )
    batch_size: int = Field(4096, ge=1, description="records tokenized per batch")


class SplitConfig(StrictModel):
    """dev/test sizes: a float below 1 is a ratio, an integer is a count; train takes the rest."""

    dev: float | int = Field(0.05, description="dev size: a ratio below 1 or a count")
    test: float | int = Field(0.05, description="test size: a ratio below 1 or a count")
    stratify: bool = Field(True, description="split each department separately so each keeps its share")

    @model_validator(mode="after")
    def _check_sizes(self) -> "SplitConfig":
        for name in ("dev", "test"):
            value = getattr(self, name)
            if value < 0 or (isinstance(value, float) and value >= 1):
                raise ValueError(f"{name} must be a ratio in [0, 1) or a non-negative count, got {value}")
        if isinstance(self.dev, float) and isinstance(self.test, float) and self.dev + self.test >= 1:
            raise ValueError(
                f"dev + test ratios must leave something for train, got {self.dev} + {self.test}"
            )
        return self


class DataConfig(StrictModel):
    """Configuration of `wenzhen data prepare`."""

    format: str | None = Field(
        None, description="force one reader for every input (default: detect per file)"
    )
    seed: int = Field(42, description="split seed")
    system_prompt: str | None = Field(
        None, description="a system turn prepended to every output conversation"
    )
    dedup: bool = Field(
        True, description="drop exact duplicate conversations (after cleaning) before the split"
    )
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    length: LengthConfig = Field(default_factory=LengthConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    progress: bool = Field(True, description="show a progress bar with records/s on a terminal")
