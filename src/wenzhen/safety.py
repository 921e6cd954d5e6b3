"""The medical safety guard used by the chat CLI, the web UI and the API.

`check(messages)` looks for red-flag situations (chest pain with sweating, stroke signs, suicidal intent,
poisoning, heavy bleeding, anaphylaxis, fever in an infant under 3 months, convulsions, pregnancy emergencies,
...) in the latest user messages; `apply(verdict, answer)` puts the emergency guidance before whatever the model
said and the not-a-diagnosis disclaimer after it. `SYSTEM_PROMPT` tells the model not to prescribe doses.

Why hand-written rules rather than a classifier: the guard must work before any model is loaded, be auditable
line by line by a clinician, and reach near-perfect recall on the situations it names; a keyword classifier
from a library would need training data we do not have. Each category is a `Registry` entry holding rules; a
rule fires when every one of its term groups has a match in the text that is neither negated ("没有胸痛") nor
marked as past history ("去年中过风") within its own clause. Co-occurrence rules ("chest pain" + "sweating")
may draw their terms from different messages of the scanned window. Recall and false alarms on the labelled
set in `resources/safety/` are measured by `tests/test_safety.py` and documented in docs/serving.md.
"""

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator

from wenzhen.config import StrictModel
from wenzhen.registry import Registry

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

# A clause ends at punctuation; negation and history cues only act inside their own clause.
_CLAUSE_END = "，,。.！!？?；;：:\n"
_NEGATION = re.compile(
    r"(?:没有|没|无|未|否认|不是|并非|从未|从没)(?!想到|多久|过多久|一会|缘无故|法|论|满|足|数)"
    rf"[^{_CLAUSE_END}]{{0,3}}$"
)
_HISTORY = re.compile(
    rf"(?:以前|之前|曾经|去年|前年|小时候|几年前|多年前|上个月|上次|既往|病史|有过)[^{_CLAUSE_END}]*$"
)


@dataclass(frozen=True)
class RedFlagCategory:
    """One kind of emergency: its rules (each a tuple of regex term groups that must all match) and the
    guidance shown first when it fires. `{number}` and `{crisis_lines}` in the guidance come from the config."""

    name: str
    title: str
    guidance: str
    rules: tuple[tuple[str, ...], ...]


CATEGORIES: Registry[RedFlagCategory] = Registry("red-flag category")

# Term groups reused by several categories.
_SUDDEN = r"突然|忽然|刚才|刚刚|一下子"
_BREATHLESS = (
    r"喘不(?:上|过|动)气|透不过气|吸不(?:进|上)气|呼吸困难|呼吸(?:很|特别|非常)?(?:急促|急|快|费劲)|"
    r"憋得|憋死|憋气|窒息|不能平躺|躺下更喘|喘得不能|说话都说不完整|哮喘发作|鼻翼扇动|胸口往里凹"
)
_CYANOSIS = r"(?:嘴唇|口唇|指甲|脸)[^，,。]{0,5}(?:发紫|发青|青紫|紫了|紫)"
_EXPOSURE = r"过敏|吃[^，,。]{0,4}后|吃了|吃完|误吃|喝了|打完|打了|输液|打针|疫苗|用药|服药"

CATEGORIES.add(
    "cardiac",
    RedFlagCategory(
        name="cardiac",
        title="疑似急性胸痛（心肌梗死、主动脉夹层等）",
        guidance="立即停止活动，坐下或半卧休息，不要自己开车去医院，马上拨打{number}。",
        rules=(
            (
                r"(?:胸|心口|心脏那里|心前区)[^，,。]{0,10}?(?:疼|痛|闷|压|紧|绞|揪)",
                r"出汗|冷汗|大汗|虚汗|冒汗|一身的?汗|全是汗|汗淋漓|汗珠|(?:出|冒|流)[^，,。]{0,4}汗|"
                + _BREATHLESS
                + r"|气短|左边?(?:胳膊|手臂|手|臂|肩)|(?:好多|很多)汗|下巴|下颌|后背|濒死|要死了|不缓解|没好|二十分钟|半个多?小时|一个小时",
            ),
            (r"胸[口部前]?(?:剧痛|剧烈疼痛)|压榨样|撕裂样",),
        ),
    ),
)
CATEGORIES.add(
    "stroke",
    RedFlagCategory(
        name="stroke",
        title="疑似脑卒中（中风）",
        guidance="记下发病时间，立即拨打{number}，尽快送往能做溶栓或取栓的医院；不要喂水喂食喂药。",
        rules=(
            (
                r"嘴歪|嘴(?:角|巴)?[^，,。]{0,6}歪|口角歪|口眼歪斜|(?:一边|半边|一侧)脸|脸[^，,。]{0,2}(?:耷拉|歪)",
            ),
            (
                r"说话[^，,。]{0,2}(?:不清|含糊|不利索)|口齿不清|言语不清|吐字不清|讲话不利索|说不出话|不能说话|"
                r"大舌头|听不懂别人说话",
            ),
            (
                r"(?:一侧|一边|半边|单侧|左|右)[^，,。]{0,6}?(?:手|脚|腿|胳膊|肢体|身体)[^，,。]{0,6}?"
                r"(?:没力气|无力|没劲|麻木|动不了|抬不起来|不听使唤|拿不住|拖着)|半身不遂|偏瘫",
            ),
            (_SUDDEN, r"重影|双影|模糊成两个|看不见|失明|走路不稳|站不稳|走路[^，,。]{0,2}歪"),
            (r"剧烈头痛|头[^，,。]{0,2}剧痛|头(?:痛|疼)欲裂|最(?:厉害|严重|痛)的头痛|炸开|爆炸样",),
            (_SUDDEN, r"头(?:痛|疼)", r"吐"),
        ),
    ),
)
CATEGORIES.add(
    "suicide",
    RedFlagCategory(
        name="suicide",
        title="自杀或自伤风险",
        guidance=(
            "如果你正有伤害自己的想法，请现在就联系{crisis_lines}；如有即刻危险请拨打110或{number}，"
            "并让一位信任的人陪在你身边。你并不孤单，求助是勇敢的。"
        ),
        rules=(
            (
                r"不想(?:再)?活|活着没(?:有)?(?:意思|意义)|活不下去|想死|去死|寻死|自杀|(?:怎么|怎样|如何)死|不想再撑|撑不下去了|活够了|轻生|割腕|自残|伤害自己|"
                r"结束(?:自己的)?(?:生命|这一切)|一了百了|死了(?:就)?(?:解脱|算了)|遗书|跳(?:楼|河|江)|"
                r"想[^，,。]{0,4}跳下去|(?:划|割|伤|刺)[^，,。]{0,3}自己|刀[^，,。]{0,4}自己|(?:想|永远)消失|不如死|"
                r"攒[^，,。]{0,6}药|药[^，,。]{0,6}攒|一次(?:吞|吃)[^，,。]{0,3}(?:下去|完|掉)|"
                r"安眠药[^，,。]{0,8}(?:全部|一次|都)",
            ),
            (r"安眠药|一瓶药|一堆药", r"全部吃|一次吃完|一口气吃|都吃了|吃掉"),
        ),
    ),
)
CATEGORIES.add(
    "poisoning",
    RedFlagCategory(
        name="poisoning",
        title="疑似中毒或药物过量",
        guidance=(
            "立即拨打{number}，把药瓶、包装或剩余物带去医院；不要自行催吐。"
            "煤气（一氧化碳）中毒先开窗通风、离开现场。"
        ),
        rules=(
            (
                r"误服|误食|误喝|误吞|吞了|喝了|吃了|偷吃|偷喝|喝进|吃进|服了|把[^，,。]{0,8}(?:吃|喝|吞)",
                r"农药|敌敌畏|百草枯|老鼠药|鼠药|杀虫剂|洁厕|消毒液|84|漂白|甲醇|假酒|野蘑菇|毒蘑菇|纽扣电池|"
                r"汽油|煤油|柴油|清洁剂|一整?瓶|一整?板|整瓶|整整一[瓶盒板]|一整?盒|(?:好多|很多|一大把|一把)[颗片粒]?[^，,。]{0,4}药|"
                r"(?:[1-9]\d|[二三四五六七八九]?十)[几多]?[片颗粒]",
            ),
            (r"误服|误食|误喝|误吞",),
            (
                r"孩子|小孩|宝宝|儿童|儿子|女儿",
                r"把[^，,。]{0,10}药[^，,。]{0,3}(?:吃|喝|吞)了|好几片|一把药|大人的药",
            ),
            (
                r"毒蘑菇|被[^，,。]{0,4}毒到|煤气中毒|一氧化碳|烧炭|(?:煤气|燃气|天然气)泄漏|食物中毒|药物中毒|毒蛇|蛇咬",
            ),
            (r"药吃多了|吃多了药|服药过量|过量服用|吃了平时[^，,。]{0,3}倍|倍的量",),
            (r"头孢|甲硝唑", r"酒", r"心慌|脸红|胸闷|呼吸困难|头晕|呕吐"),
        ),
    ),
)
CATEGORIES.add(
    "bleeding",
    RedFlagCategory(
        name="bleeding",
        title="大量出血",
        guidance="用干净的布或纱布持续用力按压出血处并抬高伤处，立即拨打{number}；呕血、便血、黑便需立即急诊。",
        rules=(
            (
                r"大出血|大量出血|出血很多|好多血|很多血|很多鲜血|血止不住|止不住血|流血不止|血流不止|"
                r"止不住|喷血|往外喷|血流如注|血哗哗|吐血|呕血|(?:呕|吐|咳)[^，,。]{0,8}血(?!丝)|(?:都|全)是[^，,。]{0,4}血|一大?[口滩摊]血|咯血|咳血|咳出[^，,。]{0,4}血|"
                r"全是血|柏油样|黑便|大便[^，,。]{0,3}黑|黑色的?大便|咖啡色|大量渗血|湿透|血块|胃出血|消化道出血",
            ),
        ),
    ),
)
CATEGORIES.add(
    "anaphylaxis",
    RedFlagCategory(
        name="anaphylaxis",
        title="疑似严重过敏反应（过敏性休克）",
        guidance="立即拨打{number}；如有医生开具的肾上腺素自动注射笔，按说明立即使用；平躺并抬高双腿，呼吸困难时可坐起。",
        rules=(
            (
                _EXPOSURE,
                r"喉咙[^，,。]{0,2}(?:发紧|肿|堵|痒)|喉头|嗓子[^，,。]{0,2}(?:发紧|肿)|声音(?:嘶哑|变了)|"
                r"舌头[^，,。]{0,3}肿|嘴唇[^，,。]{0,4}肿|脸肿|咽不下|吞咽困难|血压下降",
            ),
            (
                _EXPOSURE,
                r"(?:全身|浑身)[^，,。]{0,2}(?:起|发|都是|荨麻疹|红)|风团",
                r"头晕|胸闷|喘|呼吸|脸色苍白|血压|晕倒|站不稳|想吐",
            ),
            (r"蜇|蛰", r"头晕|全身|浑身|呼吸|喘|喉咙|肿"),
            (r"过敏性休克",),
        ),
    ),
)
_BABY_NUMBER = r"(?:\d{1,2}|[一二三四五六七八九十两]{1,3})"
CATEGORIES.add(
    "infant_fever",
    RedFlagCategory(
        name="infant_fever",
        title="3个月以下婴儿发热",
        guidance="3个月以下婴儿发热（38℃及以上）属于急症，请立即带宝宝去医院急诊，不要自行用退烧药。",
        rules=(
            (
                r"新生儿|新生宝宝|满月|出月子|刚出生|(?:未满|不满|小于|不到)(?:三|3)个月|(?:三|3)个月以下|"
                rf"出生(?:才|刚)?{_BABY_NUMBER}(?:天|周)|{_BABY_NUMBER}(?:天|周)(?:大|的宝宝|的婴儿|的孩子|的娃)|"
                rf"(?:宝宝|婴儿|孩子|娃|女儿|儿子)(?:才|刚)?{_BABY_NUMBER}(?:天|周)|"
                r"(?<![孕\d十])(?:[12一两二]个(?:半|多)?月|[一两二]个半月|[12]\.5个月)",
                r"发烧|发热|高烧|低烧|烧到|体温\s*(?:3[89]|4[0-2])|(?:3[89]|4[0-2])(?:\.\d)?(?:度|℃)|"
                r"三十[八九]度|四十度|发烫|很烫",
            ),
        ),
    ),
)
CATEGORIES.add(
    "convulsion",
    RedFlagCategory(
        name="convulsion",
        title="抽搐发作",
        guidance=(
            "让患者侧卧，移开周围危险物品，不要往嘴里塞东西、不要强行按住；记录发作时间，"
            "超过5分钟、反复发作或醒不过来立即拨打{number}。"
        ),
        rules=(
            (
                r"抽搐|抽风|惊厥|癫痫(?:发作|犯了)|口吐白沫|吐泡沫|(?:四肢|手脚|全身|浑身)[^，,。]{0,2}(?:抽动|僵直)|"
                r"(?:全身|浑身)抽筋|(?:发烧|高烧|发热|烧)[^，,。]{0,4}抽(?!血)|抽起来|牙关紧闭|两眼发直|"
                r"眼[^，,。]{0,3}(?:往上|上)翻|翻白眼",
            ),
            (r"羊角风|羊癫疯|羊羔疯", r"犯了|发作|抽"),
        ),
    ),
)
CATEGORIES.add(
    "pregnancy",
    RedFlagCategory(
        name="pregnancy",
        title="孕期急症（出血、剧烈腹痛、破水、胎动异常）",
        guidance="请立即前往医院产科急诊或拨打{number}，路上尽量平躺或侧卧。",
        rules=(
            (
                r"怀孕|孕(?:\d|[一二三四五六七八九十])|孕妇|孕[早中晚]期|孕期|怀着孕|怀了|停经|两道杠|妊娠|早孕",
                r"出血|流血|流了[^，,。]{0,3}血|见红|破水|羊水破|胎动[^，,。]{0,4}(?:没了|消失|减少|少了)|"
                r"(?:没有?|不到)[^，,。]{0,3}胎动|感觉不到胎动|剧烈疼痛|剧痛|"
                r"疼得(?:厉害|直不起|受不了|打滚)|头痛眼花|头(?:痛|疼)得厉害|眼前发黑|看不清东西|抽搐|血压很高|"
                r"血压[^，,。]{0,2}(?:1[6-9]\d|2\d\d)",
            ),
        ),
    ),
)
CATEGORIES.add(
    "breathing",
    RedFlagCategory(
        name="breathing",
        title="严重呼吸困难",
        guidance="保持坐位、松开衣领，立即拨打{number}；异物卡喉时使用海姆立克急救法。",
        rules=((_BREATHLESS,), (_CYANOSIS,)),
    ),
)
CATEGORIES.add(
    "unconscious",
    RedFlagCategory(
        name="unconscious",
        title="意识丧失",
        guidance="立即拨打{number}；没有正常呼吸时马上开始胸外按压（心肺复苏），附近有AED就取来使用。",
        rules=(
            (
                r"晕倒|昏倒|昏迷|叫不醒|不省人事|意识不清|失去意识|没(?:有)?反应|昏过去|晕过去|晕厥|神志不清|"
                r"没有呼吸(?!困难|急促|不畅)|没了呼吸|没(?:有)?心跳|心跳[^，,。]{0,4}(?:没了|停了|没有了)|心跳骤停|昏睡不醒|胡言乱语|叫都不答应|怎么叫都不",
            ),
        ),
    ),
)
CATEGORIES.add(
    "trauma",
    RedFlagCategory(
        name="trauma",
        title="严重外伤、烧烫伤、触电或溺水",
        guidance="确保现场安全后立即拨打{number}；怀疑脊柱损伤不要随意搬动伤者；烫伤先用流动凉水冲洗。",
        rules=(
            (
                r"摔|撞|车祸|磕|坠|砸",
                r"头痛越来越|呕吐|吐了|一直犯困|晕过去|昏|意识|叫不醒|耳朵流血|没感觉",
            ),
            (
                r"车祸|被车撞|大面积(?:烫伤|烧伤)|烧伤|严重烫伤|(?:烫|烧)伤[^，,。]{0,4}(?:半边|全身|大片|整个)|触电|电击|溺水|掉进水里|骨头露|摔断|变形|切断|"
                r"断指|高处(?:摔|坠|掉)|坠落|从[^，,。]{0,6}(?:楼|高处|树|房顶|屋顶|梯子)[^，,。]{0,3}(?:掉|摔|跌|坠)|"
                r"刺伤|捅伤|吸了很多烟|浓烟",
            ),
        ),
    ),
)
CATEGORIES.add(
    "abdominal",
    RedFlagCategory(
        name="abdominal",
        title="剧烈腹痛（急腹症）",
        guidance="暂时不要进食进水，不要自行服止痛药，立即去医院急诊或拨打{number}。",
        rules=(
            (
                r"(?:肚子|腹|胃)[^，,。]{0,6}(?:剧痛|剧烈|疼得|痛得|绞痛|难忍|受不了|打滚|刀割|刀绞)|剧烈腹痛|"
                r"睾丸[^，,。]{0,2}剧痛|大便像果酱|果酱样|呕吐绿色|吐绿水|硬得像木板|板状腹|不排气不排便",
            ),
        ),
    ),
)


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
    history_messages: int = Field(
        4, ge=1, le=50, description="how many of the latest user messages are scanned"
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
    """What the guard found: the categories that fired, the matched words, and the text to show first."""

    categories: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    emergency_text: str = ""
    disclaimer: str = DISCLAIMER

    @property
    def fired(self) -> bool:
        """Whether any red flag was found."""
        return bool(self.categories)


@dataclass
class _CompiledRule:
    category: str
    groups: list[re.Pattern[str]] = field(default_factory=list)


def normalise(text: str) -> str:
    """NFKC (full-width digits and letters to ASCII), lower case, no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).lower())


def _clause_prefix(text: str, start: int) -> str:
    """The text between the start of the clause containing `start` and `start`."""
    begin = max(text.rfind(mark, 0, start) for mark in _CLAUSE_END) + 1
    return text[begin:start]


def _affirmed_match(pattern: re.Pattern[str], text: str) -> str | None:
    """The first match of `pattern` that is neither negated nor past history in its clause."""
    for match in pattern.finditer(text):
        prefix = _clause_prefix(text, match.start())
        if _NEGATION.search(prefix) or _HISTORY.search(prefix):
            continue
        return match.group(0)
    return None


class Guard:
    """The guard compiled from one `SafetyConfig`."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        enabled = set(self.config.categories or CATEGORIES.names())
        self.rules: list[_CompiledRule] = []
        for name, category in CATEGORIES.items():
            if name in enabled:
                for rule in category.rules:
                    self.rules.append(_CompiledRule(name, [re.compile(group) for group in rule]))
        for extra in self.config.extra_rules:
            self.rules.append(_CompiledRule(extra.category, [re.compile(normalise(p)) for p in extra.all_of]))

    def scanned_text(self, messages: Sequence[dict[str, Any]]) -> str:
        """The latest user messages, oldest first, joined as separate sentences."""
        users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
        return "。".join(normalise(t) for t in users[-self.config.history_messages :])

    def check(self, messages: Sequence[dict[str, Any]]) -> GuardVerdict:
        """Run every enabled rule over the scanned text."""
        if not self.config.enabled:
            return GuardVerdict(disclaimer=self.config.disclaimer)
        text = self.scanned_text(messages)
        categories: list[str] = []
        evidence: list[str] = []
        for rule in self.rules:
            if rule.category in categories:
                continue
            found = [_affirmed_match(group, text) for group in rule.groups]
            if all(word is not None for word in found):
                categories.append(rule.category)
                evidence.extend(word for word in found if word is not None)
        return GuardVerdict(
            tuple(categories), tuple(evidence), self.emergency_text(categories), self.config.disclaimer
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


@lru_cache(maxsize=8)
def _guard_for(config_json: str) -> Guard:
    return Guard(SafetyConfig.model_validate_json(config_json))


def get_guard(config: SafetyConfig | None = None) -> Guard:
    """A compiled guard for `config` (cached, so servers do not recompile rules per request)."""
    return _guard_for((config or SafetyConfig()).model_dump_json())


def check(messages: Sequence[dict[str, Any]], config: SafetyConfig | None = None) -> GuardVerdict:
    """Red flags in the latest user messages of an OpenAI-style conversation."""
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
