"""Text normalisation before the guard matches anything, and measurements parsed out of the text.

`normalise(text)` makes one spelling of what patients type in many: traditional characters to simplified
(zhconv, a maintained converter from PyPI), full-width forms to ASCII (NFKC), English and pinyin phrases and
dialect words to the Mandarin words the rules use, Chinese numerals to digits ("三十八度五" -> "38.5度",
"两百二" -> "220"), and no whitespace. `measurement_facts(text)` reads glucose (mmol/L or mg/dL, HI/LO on a
meter), blood pressure, temperature (°C or °F), an infant's age and a duration out of the normalised text and
names what is dangerous about them ("血糖危急低", "婴儿小于3个月" ...); the guard appends those names to the
text, so a rule can say "glucose below 3.0" as plainly as it says "嘴歪".
"""

from __future__ import annotations

import re
import unicodedata

import zhconv

# English and pinyin phrases patients mix in, and dialect words and common typos, mapped to the Mandarin words
# of the rules. Matched on lower-cased NFKC text before whitespace is removed (so "xiong kou" is one phrase).
_PHRASES: tuple[tuple[str, str], ...] = (
    # English
    (r"chest\s*pain", "胸痛"),
    (r"heart\s*attack", "心梗"),
    (
        r"can'?t\s*breathe|cannot\s*breathe|hard\s*to\s*breathe|short(?:ness)?\s*of\s*breath",
        "喘不上气",
    ),
    (r"(?:is\s*)?not\s*breathing|stopped\s*breathing|no\s*pulse", "没有呼吸"),
    (r"collaps(?:ed|es|e)", "倒地"),
    (r"sweat(?:ing|y)?", "出汗"),
    (r"seizures?|fitting|convulsions?", "抽搐"),
    (r"kill\s*myself|end\s*my\s*life|suicid(?:e|al)|want\s*to\s*die|kms", "想自杀"),
    (r"overdos(?:e|ed)", "吃药过量"),
    (r"chok(?:ing|ed|es)", "噎住"),
    (r"unconscious|passed\s*out|unresponsive", "昏迷"),
    (r"suddenly|all\s*of\s*a\s*sudden", "突然"),
    (r"my\s*(?:mom|mum|mother)", "我妈"),
    (r"my\s*(?:dad|father)", "我爸"),
    (r"face\s*(?:is\s*)?droop\w*|droop\w*\s*face", "嘴歪"),
    (r"can'?t\s*(?:speak|talk)|cannot\s*(?:speak|talk)|slurr\w*\s*(?:speech|words)?", "说不出话"),
    (r"(?:weak|numb)\w*\s*(?:on\s*)?one\s*side|one\s*side\s*(?:is\s*)?(?:weak|numb)", "一侧无力"),
    (r"stroke", "中风"),
    (r"allergic\s*reaction|anaphyla\w*", "严重过敏"),
    (r"fever", "发烧"),
    (r"bleeding", "出血"),
    (r"vomit(?:ing)?", "呕吐"),
    (r"baby|bb(?![a-z])", "宝宝"),
    (r"pregnant", "怀孕"),
    (r"old\b", ""),
    (r"weeks?", "周"),
    (r"mins?|minutes?", "分钟"),
    (r"hours?|hrs?", "小时"),
    # pinyin (with or without spaces between syllables)
    (r"xiong\s*(?:kou\s*)?(?:tong|teng)", "胸口痛"),
    (r"xiong\s*kou", "胸口"),
    (r"xiong\s*men", "胸闷"),
    (r"hen\s*men", "很闷"),
    (r"tong\s*dao", "痛到"),
    (r"(?:zuo|you)?\s*shou\s*bi", "手臂"),
    (r"tou\s*(?:tong|teng)", "头痛"),
    (r"du\s*zi\s*(?:tong|teng)", "肚子痛"),
    (r"chuan\s*bu\s*(?:shang|guo)\s*qi", "喘不上气"),
    (r"zui\s*wai", "嘴歪"),
    (r"shuo\s*hua\s*bu\s*qing", "说话不清"),
    (r"jiao\s*bu\s*xing", "叫不醒"),
    (r"chu\s*leng\s*han", "出冷汗"),
    (r"chu\s*(?:le\s*)?(?:hen\s*duo\s*|hao\s*duo\s*|yi\s*shen\s*)?(?:xu\s*)?han", "出了很多汗"),
    (r"hen\s*li\s*hai", "很厉害"),
    (r"bu\s*xiang\s*huo(?:\s*le)?", "不想活了"),
    (r"xiang\s*si", "想死"),
    (r"zi\s*sha", "自杀"),
    (r"zhong\s*feng", "中风"),
    (r"hun\s*mi", "昏迷"),
    (r"chou\s*chu", "抽搐"),
    (r"hu\s*xi\s*kun\s*nan", "呼吸困难"),
    (r"de\s*lihai|de\s*li\s*hai", "得厉害"),
    # dialect and colloquial words (Cantonese, northern, south-western), and frequent typos
    (r"what\s*(?:is|are)", "是什么"),
    (r"(?:blood\s*)?sugar|glucose", "血糖"),
    (r"testicles?|testis", "睾丸"),
    # Cantonese (after traditional -> simplified)
    (r"佢", "他"),
    (r"食咗|食了", "吃了"),
    (r"饮咗", "喝了"),
    (r"咗", "了"),
    (r"而家", "现在"),
    (r"睇", "看"),
    (r"嘢", "东西"),
    (r"呕紧", "在吐"),
    (r"(?<=[吐流抽痛])紧", ""),
    (r"唔知咩", "不知道什么"),
    (r"唔识|唔会", "不会"),
    (r"郁唔到|郁不到", "动不了"),
    (r"(?<=[撞跌碰烫整])亲", "到"),
    (r"耳仔", "耳朵"),
    (r"肚仔", "肚子"),
    (r"细路(?:哥|仔|女)?|仔仔|bb仔", "孩子"),
    (r"春袋", "阴囊"),
    (r"屙", "拉"),
    (r"成日", "一整天"),
    (r"一排药", "一板药"),
    (r"冇晒|冇哂", "没了"),
    (r"乱讲嘢|乱讲话|乱讲", "胡言乱语"),
    (r"手震", "手抖"),
    (r"行唔到|行不到", "走不了"),
    (r"瞓", "睡"),
    (r"攰", "累"),
    (r"老豆|老窦", "爸爸"),
    (r"(?<![作呕])呕(?![吐心])", "呕吐"),
    (r"好似", "好像"),
    (r"嘅", "的"),
    (r"啲", "些"),
    (r"通渠水?", "管道疏通剂"),
    # south-western and northern colloquial words
    (r"老汉儿?", "爸爸"),
    (r"(?:嘴皮|嘴唇)(?:子)?乌", "嘴唇发紫"),
    (r"嘴皮", "嘴唇"),
    (r"遭不住|扛不住|顶不住", "受不了"),
    (r"呼息", "呼吸"),
    (r"为啥", "为什么"),
    (r"是啥", "是什么"),
    (r"咋(?=防|预防|避免|回事|治|弄|处理|样)", "怎么"),
    (r"俩(?=岁|个月)", "2"),
    (r"小鸡鸡下面的?球球|蛋球", "睾丸"),
    (r"冇", "没有"),
    (r"唔", "不"),
    (r"讲不出话", "说不出话"),
    (r"拎不起", "抬不起来"),
    (r"面青青|面色青", "脸色发青"),
    (r"心口窝子?", "心口"),
    (r"脑壳", "头"),
    (r"娃儿|娃娃", "孩子"),
    (r"俺|偶(?=[爸妈家])", "我"),
    (r"蛋蛋|卵蛋", "睾丸"),
    (r"睾丸?丸", "睾丸"),
    (r"肚儿", "肚子"),
    (r"拉稀", "腹泻"),
    (r"羊[角癫]疯|羊羔疯", "癫痫发作"),
    (r"抽风", "抽搐"),
    (r"抽蓄|抽畜", "抽搐"),
    (r"昏谜|昏眯", "昏迷"),
    (r"打摆子", "寒战"),
    (r"背过气去?", "昏厥"),
    (r"満", "满"),
    (r"媽", "妈"),
)
_PHRASE_PATTERNS = tuple((re.compile(pattern), replacement) for pattern, replacement in _PHRASES)

_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_UNITS = {"十": 10, "百": 100, "千": 1000}
_NUMERAL = "零〇一二两三四五六七八九十百千"
# A Chinese numeral is rewritten as digits when it is clearly a number: it has 十/百/千/点, or a unit of
# measure follows it. "一边", "一下子", "两道杠" stay words.
_CHINESE_NUMBER = re.compile(rf"[{_NUMERAL}]+(?:点[{_NUMERAL}]+)?(?:(?<=[十百千])[{_NUMERAL}])?")
_MEASURE_FOLLOWS = re.compile(
    r"(?:度|℃|片|颗|粒|周|天|岁|mmol|毫摩|个(?:半|多)?(?:月|星期|小时|钟头)|分钟|小时)"
)


# "38度5" / "38度五": the spoken way of saying 38.5 degrees.
_DEGREE_TENTHS = re.compile(r"(3\d|4[0-2])度([一二三四五六七八九])")


def _integer(numeral: str) -> int | None:
    """'三十八' -> 38, '两百二' -> 220 (the colloquial 'two hundred two(ty)'), '一八五' -> 185."""
    if not any(ch in _UNITS for ch in numeral):
        return int("".join(str(_DIGITS[ch]) for ch in numeral)) if numeral else None
    total, current, last_unit, zero = 0, 0, 1, False
    for ch in numeral:
        if ch in _DIGITS:
            current, zero = _DIGITS[ch], zero or _DIGITS[ch] == 0
        else:
            unit = _UNITS[ch]
            total += (current or (1 if unit == 10 else 0)) * unit
            current, last_unit, zero = 0, unit, False
    if current:  # after a unit: 两百二 = 220, 一千五 = 1500, but 一百零一 = 101 and 三十八 = 38
        total += current * (last_unit // 10 if last_unit >= 100 and not zero else 1)
    return total


def _chinese_number(match: re.Match[str]) -> str:
    text = match.group(0)
    following = match.string[match.end() : match.end() + 8]
    if not (set(text) & {"十", "百", "千", "点"} or _MEASURE_FOLLOWS.match(following)):
        return text
    if text[0] in "百千" or (text == "十" and following[:1] == "分" and following[:2] != "分钟"):
        return text  # 百草枯, 千万, 十分 (very) are words
    whole, _, fraction = text.partition("点")
    value = _integer(whole)
    if value is None:
        return text
    if fraction:
        return f"{value}.{''.join(str(_DIGITS.get(ch, 0)) for ch in fraction)}"
    return str(value)


_HAN = re.compile(r"[\u3400-\u9fff]")


def _spaces_to_clauses(text: str) -> str:
    """A space between two Chinese runs of three or more characters becomes a clause break (see `normalise`)."""
    parts = re.split(r"(\s+)", text)
    for i in range(1, len(parts) - 1, 2):
        left, right = parts[i - 1], parts[i + 1]
        if len(left) >= 3 and len(right) >= 3 and _HAN.match(left[-1]) and _HAN.match(right[0]):
            parts[i] = "，"
    return "".join(parts)


def normalise(text: str) -> str:
    """One spelling for the guard: simplified, NFKC, lower case, mapped phrases, digits; a space between
    Chinese words becomes a clause break, other whitespace goes."""
    text = zhconv.convert(unicodedata.normalize("NFKC", text), "zh-cn").lower()
    # Many people type spaces where punctuation goes ("外婆突然听不懂了 右手也软了"): a space between two runs
    # of at least three Chinese characters ends a clause, so negation, history and hyperbole stay inside their
    # own clause; a space inside a short phrase ("胸口 剧痛") and spaces around English or pinyin words go.
    text = _spaces_to_clauses(text)
    for pattern, replacement in _PHRASE_PATTERNS:
        text = pattern.sub(replacement, text)
    text = re.sub(r"\s+", "", text)
    text = _CHINESE_NUMBER.sub(_chinese_number, text)
    return _DEGREE_TENTHS.sub(lambda m: f"{m.group(1)}.{_DIGITS[m.group(2)]}度", text)


# --- measurements -------------------------------------------------------------------------------------------

_NUMBER = r"(\d{1,3}(?:\.\d+)?)"
_GLUCOSE = re.compile(
    rf"血糖[^，,。；;!！?？]{{0,10}}?(?:{_NUMBER}\s*(mg/dl|mg|mmol/l|mmol|毫摩尔?)?|(hi|lo)(?![a-z]))"
)
_DIABETES = re.compile(r"糖尿病|血糖|胰岛素|降糖")
_BARE_READING = re.compile(
    r"测[了的得出]?(?:是|为|出来)?(\d{1,2}(?:\.\d+)?)()(?![\d.]*(?:度|℃|°|/|%|次|岁|个|斤|公斤|kg|cm|分))()?"
)
_PRESSURE = re.compile(r"(?<![\d.])(\d{2,3})\s*/\s*(\d{2,3})(?![\d.])")
_SYSTOLIC = re.compile(r"(?:血压|高压|收缩压)[^，,。；;\d]{0,8}?(\d{2,3})(?![\d./])")
_DIASTOLIC = re.compile(r"(?:低压|舒张压)[^，,。；;\d]{0,4}?(\d{2,3})(?![\d.])")
_TEMPERATURE = re.compile(
    rf"{_NUMBER}\s*(°f|华氏度|华氏|度|℃|°c|°)|(?:体温|发烧|发热|烧到|肛温|耳温|腋温)[^，,。\d]{{0,4}}?{_NUMBER}"
)
_FAHRENHEIT_WORD = re.compile(r"华氏|°f")
_AGE = re.compile(
    r"(?:出生|生下来)(?:才|刚|仅)?(\d{1,3})(天|周|个?星期)|(\d{1,3})(天|周|个?星期)(?:大|的(?:宝宝|婴儿|孩子|新生儿|宝))|"
    r"(?:宝宝|婴儿|孩子|娃|女儿|儿子|宝)(?:才|刚|刚刚|只有)?(\d{1,3}(?:\.5)?)(天|周|个?星期|个(?:半)?月)|"
    r"(\d{1,2}(?:\.5)?)(个(?:半)?月|周|个?星期)(?:大|的[^,，。]{0,2}(?:宝|婴儿|孩子|娃)|零?\d+天|宝宝)"
)
_DURATION = re.compile(r"(\d{1,3}(?:\.\d)?)多?(分钟|个?小时|个?钟头)|(半个?多?小时|半个?钟头)")


def _glucose_mmol(value: float, unit: str) -> float:
    """mmol/L; a value above 40 with no unit, or any mg/dL, is mg/dL (18 mg/dL per mmol/L)."""
    return value / 18.0 if unit.startswith("mg") or (not unit and value > 40) else value


def _celsius(value: float, text_after: str) -> float | None:
    if _FAHRENHEIT_WORD.match(text_after) or 93 <= value <= 110:
        return round((value - 32) * 5 / 9, 1)
    return value if 34 <= value <= 43 else None


def _age_months(amount: float, unit: str) -> float:
    if "天" in unit:
        return amount / 30.4
    if "周" in unit or "星期" in unit:
        return amount / 4.35
    return amount + (0.5 if "半" in unit else 0.0)


def measured(text: str) -> list[str]:
    """What normalised `text` gives a reading of (血糖, 血压, 体温, an infant's age), dangerous or not: with the facts, the
    learned stage can tell "a normal reading" from "a dangerous one" without learning digits."""
    kinds = {"血糖": _GLUCOSE, "血压": _PRESSURE, "体温": _TEMPERATURE, "月龄": _AGE}
    return [name for name, pattern in kinds.items() if pattern.search(text)]


def measurement_facts(text: str) -> list[str]:
    """Names of the dangerous measurements in normalised `text`, for the rules to match."""
    facts: list[str] = []
    readings = list(_GLUCOSE.finditer(text))
    if _DIABETES.search(text):  # "测了是1.9" in a conversation about diabetes is a glucose reading
        readings += list(_BARE_READING.finditer(text))
    for match in readings:
        if match.group(3):
            facts.append("血糖危急高" if match.group(3) == "hi" else "血糖危急低")
            continue
        mmol = _glucose_mmol(float(match.group(1)), match.group(2) or "")
        if mmol < 3.0:
            facts.append("血糖危急低")
        elif mmol < 3.9:
            facts.append("血糖偏低")
        elif mmol >= 33.3:
            facts.append("血糖危急高")
        elif mmol >= 16.7:
            facts.append("血糖很高")
    systolic = [int(m.group(1)) for m in _PRESSURE.finditer(text) if 60 <= int(m.group(1)) <= 300]
    diastolic = [int(m.group(2)) for m in _PRESSURE.finditer(text) if 30 <= int(m.group(2)) <= 200]
    systolic += [int(m.group(1)) for m in _SYSTOLIC.finditer(text)]
    diastolic += [int(m.group(1)) for m in _DIASTOLIC.finditer(text)]
    if any(s >= 200 for s in systolic) or any(d >= 130 for d in diastolic):
        facts.append("血压极高")
    elif any(s >= 180 for s in systolic) or any(d >= 120 for d in diastolic):
        facts.append("血压危急高")
    if any(s < 90 for s in systolic if s >= 50):
        facts.append("血压过低")
    temperatures = []
    for match in _TEMPERATURE.finditer(text):
        if match.group(1):
            celsius = _celsius(float(match.group(1)), match.group(2))
        else:
            celsius = _celsius(float(match.group(3)), text[match.end() : match.end() + 3])
        if celsius is not None:
            temperatures.append(celsius)
    if any(t >= 40 for t in temperatures):
        facts.append("体温极高")
    if any(t >= 38 for t in temperatures):
        facts.append("体温达到发烧")
    for match in _AGE.finditer(text):
        groups = [g for g in match.groups() if g]
        if len(groups) >= 2 and _age_months(float(groups[0]), groups[1]) < 3:
            facts.append("婴儿小于3个月")
    minutes = []
    for match in _DURATION.finditer(text):
        if match.group(3):
            minutes.append(30.0)
        else:
            minutes.append(
                float(match.group(1)) * (60 if ("时" in match.group(2) or "钟头" in match.group(2)) else 1)
            )
    if any(m >= 15 for m in minutes):
        facts.append("持续超过15分钟")
    return list(dict.fromkeys(facts))
