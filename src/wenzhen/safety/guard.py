"""The medical safety guard used by the chat CLI, the web UI, the API and `wenzhen eval safety`.

`Guard(config).check(messages)` reads the whole conversation's user messages in order and keeps a state: a
red flag reported in any message stays flagged until a later message says the emergency is over
(`speech.is_resolution`). Each message is normalised (`normalise.normalise`: simplified characters,
full-width forms, dialect, pinyin and English phrases, numbers in any script, parsed measurements) and
classified by speech act (`speech.speech_act`): only reports of something happening now count, not questions
about a condition, exams, prevention, hearsay or past resolved history; hyperbole is stripped. Two stages then
look for emergencies:

1. **rules** (`categories.CATEGORIES`, the auditable floor): term groups written from triage sources, matched
   on the recent reported messages joined (so "我胸口疼" then "还一直出冷汗" fires), each match affirmed in its
   own clause (not negated, not past history);
2. **a learned stage** (`classifier.NgramClassifier`): a character n-gram linear model trained by
   `wenzhen.safety.training` on examples generated from the category table, hand-written probes and real
   consultation questions; it adds a category where its score passes the threshold chosen on a held-out split.

`apply(verdict, answer)` puts the emergency guidance before whatever the model said and the disclaimer after
it. `SYSTEM_PROMPT` tells the model not to prescribe doses.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator

from wenzhen.config import StrictModel
from wenzhen.safety import speech
from wenzhen.safety.categories import CATEGORIES, CLAUSE_END
from wenzhen.safety.classifier import MIN_SCORED_CHARS, NgramClassifier, load_shipped
from wenzhen.safety.normalise import measurement_facts, normalise

DISCLAIMER = (
    "本回答由AI生成，仅供健康科普参考，不构成医学诊断或治疗方案；用药请遵医嘱或咨询药师，如有不适请及时就医。"
)

SYSTEM_PROMPT = (
    "你是一名谨慎、耐心的中文医疗咨询助手。请用通俗易懂的语言解释可能的原因、需要注意的情况和就医建议。"
    "不要给出确定的诊断，不要开处方，不要给出任何药物的具体剂量、用法用量或疗程，请用户遵医嘱或按说明书并咨询医生、药师；"
    "儿童、孕妇、老人和慢性病患者尤其要建议就医。遇到胸痛、呼吸困难、中风征象、自杀或自伤念头、中毒、大出血、"
    "严重过敏、抽搐、孕期出血等紧急情况，首先建议立即拨打120或前往最近的急诊。"
)

EMERGENCY_HEADER = "【紧急提醒】您描述的情况可能危及生命，请不要等待线上回复："
EMERGENCY_FOOTER = "以下AI回答仅供参考，不能代替急救和医生面诊。"

# Negation and history cues act only inside their own clause, just before the matched words.
_NEGATION = re.compile(rf"{speech.NEGATION_CUE}[^{CLAUSE_END}]{{0,3}}$")
# "没有口唇肿胀、腹痛、呼吸困难": a negation covers every item of the list that follows it.
_NEGATED_LIST = re.compile(
    rf"(?:没有|没|无|未|否认|不伴有?)[^{CLAUSE_END}]{{0,40}}、[^{CLAUSE_END}、]{{0,3}}$"
)
_HISTORY = re.compile(
    rf"(?:以前|之前|曾经|去年|前年|小时候|几年前|多年前|\d+年前|[一两二三四五六七八九十]+年前|半年前|几个月前|\d+个月前|上个月|上次|上周|当年|当时|既往|病史|有过|得过)[^{CLAUSE_END}]*$"
)
# Co-occurrence spans at most this many of the latest reported user messages of the current episode.
WINDOW_MESSAGES = 6
# An overdose taken on purpose needs the crisis line as well as 120, and a plan carried out needs 120.
_INTENT = re.compile(
    r"故意|(?<!不)想死|不想活|自杀|不想被救|一口气|后悔|不想醒|想结束|别(?:来)?(?:找|救)我|永别|解脱|再见了|对不起(?:大家|你们)|"
    r"我把(?:所有|全部|一整?瓶|整瓶)"  # someone who swallowed all their own pills took them on purpose
)
_TAKEN = re.compile(r"(?:吃|吞|服|喝)(?:下去|了|掉)|已经吃|割了|划了")


class ExtraRule(StrictModel):
    """A site-specific rule added from the config: every regex in `all_of` must match."""

    category: str = Field(description="an existing category name; its guidance is shown when the rule fires")
    all_of: list[str] = Field(min_length=1, description="regular expressions that must all match")

    @field_validator("all_of")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return patterns

    @field_validator("category")
    @classmethod
    def _known_category(cls, name: str) -> str:
        if name not in CATEGORIES:
            raise ValueError(f"unknown category {name!r}; choose one of: {', '.join(CATEGORIES.names())}")
        return name


class SafetyConfig(StrictModel):
    """How the guard behaves; the defaults are what chat, web and API use."""

    enabled: bool = Field(True, description="false turns red-flag detection off (the disclaimer stays)")
    categories: list[str] | None = Field(None, description="categories to detect; null = all")
    classifier: bool = Field(
        True, description="also use the learned n-gram stage (the rules always run); false = rules only"
    )
    classifier_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="score above which the learned stage fires; null = the shipped threshold",
    )
    emergency_number: str = Field("120", description="the emergency number named in the guidance")
    crisis_lines: list[str] = Field(
        default_factory=lambda: ["全国统一心理援助热线 12356", "希望24热线 400-161-9995"],
        description="mental-health crisis lines named when the suicide category fires",
    )
    disclaimer: str = Field(DISCLAIMER, description="appended to every answer; empty = none")
    system_prompt: str = Field(SYSTEM_PROMPT, description="added when the conversation has no system message")
    extra_rules: list[ExtraRule] = Field(
        default_factory=list, description="site-specific rules: [{category, all_of: [regex, ...]}]"
    )

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, names: list[str] | None) -> list[str] | None:
        unknown = [n for n in names or [] if n not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; choose from: {', '.join(CATEGORIES.names())}")
        return names


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard found: the categories flagged now, the matched words, and the text to show first.

    `rule_categories` fired by rule, `model_categories` added by the learned stage; `score` is the learned
    stage's highest emergency score over the reported messages; `acts` is the speech act of each user message."""

    categories: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    emergency_text: str = ""
    disclaimer: str = DISCLAIMER
    rule_categories: tuple[str, ...] = ()
    model_categories: tuple[str, ...] = ()
    score: float = 0.0
    acts: tuple[str, ...] = ()

    @property
    def fired(self) -> bool:
        """Whether any red flag is flagged."""
        return bool(self.categories)


@dataclass
class _CompiledRule:
    category: str
    groups: list[re.Pattern[str]] = field(default_factory=list)
    vetoes: list[re.Pattern[str]] = field(default_factory=list)  # groups written with a leading "!"

    @classmethod
    def of(cls, category: str, groups: Sequence[str]) -> "_CompiledRule":
        rule = cls(category)
        for group in groups:
            if group.startswith("!"):
                rule.vetoes.append(re.compile(group[1:]))
            else:
                rule.groups.append(re.compile(group))
        return rule


def _clause_prefix(text: str, start: int) -> str:
    """The text between the start of the clause containing `start` and `start`."""
    begin = max(text.rfind(mark, 0, start) for mark in CLAUSE_END) + 1
    return text[begin:start]


def _affirmed_match(pattern: re.Pattern[str], text: str) -> str | None:
    """The first match of `pattern` that is neither negated nor past history in its clause."""
    for match in pattern.finditer(text):
        prefix = _clause_prefix(text, match.start())
        if _NEGATION.search(prefix) or _NEGATED_LIST.search(prefix) or _HISTORY.search(prefix):
            continue
        return match.group(0)
    return None


@dataclass
class _State:
    """What the guard knows after reading some of the conversation."""

    flagged: dict[str, None] = field(default_factory=dict)  # ordered set of categories
    rule_flagged: dict[str, None] = field(default_factory=dict)
    model_flagged: dict[str, None] = field(default_factory=dict)
    reported: list[str] = field(default_factory=list)  # normalised reports of the current episode
    evidence: list[str] = field(default_factory=list)
    score: float = 0.0
    acts: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.flagged.clear()
        self.rule_flagged.clear()
        self.model_flagged.clear()
        self.reported.clear()
        self.evidence.clear()


class Guard:
    """The guard compiled from one `SafetyConfig`."""

    def __init__(self, config: SafetyConfig | None = None, classifier: NgramClassifier | None = None) -> None:
        self.config = config or SafetyConfig()
        self.enabled = set(self.config.categories or CATEGORIES.names())
        self.rules: list[_CompiledRule] = []
        for name, category in CATEGORIES.items():
            if name in self.enabled:
                for rule in category.rules:
                    self.rules.append(_CompiledRule.of(name, rule))
        for extra in self.config.extra_rules:
            self.rules.append(_CompiledRule(extra.category, [re.compile(normalise(p)) for p in extra.all_of]))
        self.classifier = (
            classifier if classifier is not None else (load_shipped() if self.config.classifier else None)
        )
        self.threshold = (
            self.config.classifier_threshold
            if self.config.classifier_threshold is not None
            else (self.classifier.threshold if self.classifier else 1.0)
        )

    def rule_categories(self, text: str) -> tuple[list[str], list[str]]:
        """Categories whose rules fire on normalised `text` (measurement facts appended), and the matched words."""
        text = f"{text}。{'。'.join(measurement_facts(text))}"
        categories: list[str] = []
        evidence: list[str] = []
        for rule in self.rules:
            if rule.category in categories:
                continue
            found = [_affirmed_match(group, text) for group in rule.groups]
            if all(word is not None for word in found) and not any(v.search(text) for v in rule.vetoes):
                categories.append(rule.category)
                evidence.extend(word for word in found if word is not None)
        return _with_combinations(categories, text, self.enabled), evidence

    def model_categories(self, text: str) -> tuple[list[str], float]:
        """The learned stage's category for one normalised report, if its score passes the threshold."""
        if self.classifier is None or len(text) < MIN_SCORED_CHARS:
            return [], 0.0
        score, category = self.classifier.predict(text)
        fired = score >= self.threshold and category in self.enabled
        return ([category] if fired else []), score

    def read(self, state: _State, content: str) -> None:
        """Update `state` with one user message."""
        text = normalise(content)
        act = speech.speech_act(text)
        state.acts.append(act.value)
        if act is not speech.Act.REPORT:
            return
        text = speech.strip_hyperbole(text)
        alone, _ = self.rule_categories(text)
        if speech.is_resolution(text) and not alone and state.flagged:
            state.clear()
            return
        state.reported.append(text)
        rules, evidence = self.rule_categories("。".join(state.reported[-WINDOW_MESSAGES:]))
        model, score = self.model_categories(text)
        state.score = max(state.score, score)
        state.evidence.extend(evidence)
        for name in rules:
            state.rule_flagged[name] = None
        for name in model:
            if name not in rules:
                state.model_flagged[name] = None
        for name in [*rules, *model]:
            state.flagged[name] = None

    def check(self, messages: Sequence[dict[str, Any]]) -> GuardVerdict:
        """Read every user message in order; what is flagged after the last one."""
        if not self.config.enabled:
            return GuardVerdict(disclaimer=self.config.disclaimer)
        state = _State()
        for message in messages:
            if message.get("role") == "user":
                self.read(state, str(message.get("content") or ""))
        categories = [name for name in CATEGORIES.names() if name in state.flagged]
        categories += [name for name in state.flagged if name not in categories]  # extra-rule names stay
        return GuardVerdict(
            tuple(categories),
            tuple(dict.fromkeys(state.evidence)),
            self.emergency_text(categories),
            self.config.disclaimer,
            tuple(state.rule_flagged),
            tuple(state.model_flagged),
            round(state.score, 4),
            tuple(state.acts),
        )

    def emergency_text(self, categories: Sequence[str]) -> str:
        """Header, one guidance line per category, footer; empty when nothing fired."""
        if not categories:
            return ""
        crisis = "、".join(self.config.crisis_lines)
        lines = [f"⚠️ {EMERGENCY_HEADER}"]
        for name in categories:
            category = CATEGORIES.get(name)
            guidance = category.guidance.format(number=self.config.emergency_number, crisis_lines=crisis)
            lines.append(f"- {category.title}：{guidance}")
        if "suicide" not in categories or len(categories) > 1:
            lines.append(f"- 立即拨打 {self.config.emergency_number} 急救电话，或尽快到最近医院急诊。")
        lines += ["", EMERGENCY_FOOTER]  # the blank line ends the list when the text is rendered as Markdown
        return "\n".join(lines)


def _with_combinations(categories: list[str], text: str, enabled: set[str]) -> list[str]:
    """Add what a combination needs: an intentional overdose is also a suicide attempt (crisis line), and a
    suicide plan already carried out with pills is also a poisoning (120)."""
    found = list(categories)
    if "poisoning" in found and "suicide" not in found and "suicide" in enabled and _INTENT.search(text):
        found.append("suicide")
    carried_out = _TAKEN.search(text) and re.search(r"药|片|粒", text)
    if "suicide" in found and "poisoning" not in found and "poisoning" in enabled and carried_out:
        found.append("poisoning")
    return found


@lru_cache(maxsize=8)
def _guard_for(config_json: str) -> Guard:
    return Guard(SafetyConfig.model_validate_json(config_json))


def get_guard(config: SafetyConfig | None = None) -> Guard:
    """A compiled guard for `config` (cached, so servers do not recompile rules per request)."""
    return _guard_for((config or SafetyConfig()).model_dump_json())


def check(messages: Sequence[dict[str, Any]], config: SafetyConfig | None = None) -> GuardVerdict:
    """Red flags in an OpenAI-style conversation."""
    return get_guard(config).check(messages)


def answer_prefix(verdict: GuardVerdict) -> str:
    """What goes before the model's answer: the emergency guidance and a blank line, or nothing."""
    return f"{verdict.emergency_text}\n\n" if verdict.fired else ""


def answer_suffix(verdict: GuardVerdict) -> str:
    """What goes after the model's answer: the disclaimer."""
    return f"\n\n{verdict.disclaimer}" if verdict.disclaimer else ""


def apply(verdict: GuardVerdict, answer_text: str) -> str:
    """The answer as shown to the user: emergency guidance first (whatever the model said), then the
    answer, then the disclaimer."""
    return f"{answer_prefix(verdict)}{answer_text.strip()}{answer_suffix(verdict)}"


def with_system_prompt(
    messages: list[dict[str, Any]], config: SafetyConfig | None = None
) -> list[dict[str, Any]]:
    """`messages` with the safety system prompt first, unless the caller already gave a system message."""
    if any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": (config or SafetyConfig()).system_prompt}, *messages]
