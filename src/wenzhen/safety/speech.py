"""Speech act and time: is this message a report of something happening now to a real person?

The same words mean different things in "我爸嘴歪了，说话不清" and "中风的早期表现是什么，嘴歪说话不清吗".
The guard counts a message's red-flag content only when the message is a **report**. It is not when it is

- an **exam or teaching** context (考试题, 选择题, 病例分析, 讲课, 小说, 剧本 ...), or a clinical case
  vignette about a third person (一名28岁女性患者出现…) that does not speak in the first person;
- a **question about a condition** (有哪些症状, 是什么, 怎么区分, 的定义 ...) with no person and no "now";
- **prevention** (怎么预防, 防止, 避免) or a **hypothetical** (如果…怎么办, 万一, 遇到有人…) with no "now";
- **hearsay or media** (新闻, 电视上, 视频里, 听说) with no "now";
- **past history** resolved or worked up (去年…现在恢复很好, 前两天…后来检查是…) with no "now" (今天, 刚才);
- a **question about caring for a diagnosed condition** (癫痫病人能结婚吗, 哪家医院治X好) with no "now".

Hyperbole is removed clause by clause before matching: a figurative consequence (想死, 窒息, 吐血, 晕倒,
心脏病 ...) caused by an everyday thing (加班, 作业, 老板, 房价, 天气, 辣, 笑 ...), or a mood or sensation
word in the "X得…死/X死了" pattern (累得想死, 热死了, 笑死), or 想死你了. "疼得想死" stays: pain is not
everyday. `is_resolution` says when a message ends an emergency reported earlier (醒过来了, 救护车到了,
已经在医院, 没事了).
"""

from __future__ import annotations

import re
from enum import Enum

from wenzhen.safety.categories import CLAUSE_END

_C = rf"[^{CLAUSE_END}]"


class Act(str, Enum):
    """What a user message does."""

    REPORT = "report"
    EXAM = "exam"
    ABOUT = "about"
    PREVENTION = "prevention"
    HEARSAY = "hearsay"
    PAST = "past"
    DIAGNOSED = "diagnosed"


# "Now" markers: strong ones make a message a report whatever else it says; weak ones (突然, 越来越) also
# occur in narratives of past episodes, so history and diagnosed-condition questions are checked first.
STRONG_NOW = re.compile(
    rf"刚才|刚刚|现在{_C}{{0,2}}(?:又|还在|一直|开始|突然|越来越|叫不|昏|抽|在吐)|正在|今天|今晚|今早|此刻|"
    rf"一直在|还在|在线等|救命|快来|急死|怎么救|要不要(?:叫|打)|叫救护车|打120|\d+分钟了|半小时了|在吐|在流"
)
WEAK_NOW = re.compile(rf"突然|忽然|越来越|怎么办|又(?:犯|发|抽|开始)|已经{_C}{{0,4}}(?:分钟|小时)了")
EXAM = re.compile(
    r"考试题|考试:|考题|试题|题目|模拟题|答案|选哪个|哪一项|明天考|选择题|这道题|病例分析|病例讨论|作业|论文|考核|规培|执业医师|护士资格|资格证|医学生|"
    r"上课|讲课|课上|教学|培训|演练|竞赛|出(?:几道|一份|一些|一道)?题|小说|剧本|电视剧|拍戏|演一个|扮演|怎样演|怎么演|"
    r"我是(?:一名)?(?:护士|医生|护理|医学|药学|临床|急救员)|(?:护理|临床|医学|药学)专业|实习|见习|带教|"
    rf"(?:帮我|帮忙|请)写(?!{_C}{{0,3}}遗)|写(?:一段|一篇|一个|一条|一封|个|段)(?!{_C}{{0,3}}遗)|"
    r"故事|文案|海报|科普|口诀|问卷|量表|[a-d]\.\D{1,12}[b-e]\.|药理学|儿科学|解剖课|心理学作业|急救知识|急救课"
)
# A clinical case vignette written about a third person, as in textbooks and exams ("一名28岁女性患者出现昏迷").
CASE_VIGNETTE = re.compile(
    rf"(?:一名|一位|某|该){_C}{{0,8}}(?:男性|女性|患者|病人|男孩|女孩|女童|男童|孕妇|产妇|老人|男子|女子|儿童|婴儿|新生儿)|"
    rf"^(?:患者|病人)|(?:[张李王赵刘陈杨黄吴周][先女]士|小[红明刚丽华])(?:因|出现|患|是|在|,)"
)
FIRST_PERSON = re.compile(r"我|俺|咱")
ABOUT = re.compile(
    rf"有哪些|有些什么|有什么|哪几|是什么|怎么回事|多长时间|会引起|会不会引起|几度需要|什么是|的症状|的表现|有什么(?:区别|不同|表现)|{_C}{{0,12}}(?:区别|不同)|怎么区分|如何区分|的定义|定义是|"
    rf"的原因|诱因|机制|为什么|会传染|遗传|死亡率|多少算|正常值|标准是|的诊断|怎么识别|如何识别|识别法|适用于|是指|几种|类型|分类|种类|是什么意思|有什么前兆|前兆|怎么开展|干预热线|"
    rf"评分|量表|一回事|原理|应该{_C}{{0,6}}多久|多久算|要多久|算{_C}{{0,6}}吗|算不算|比例|发病率|患病率|几率|概率|会转化|会变成|会发展成|病因|会不会|什么情况下|几小时内|原则|步骤|要用什么药|是不是要生了|有用吗|是真的吗"
)
PERSON = re.compile(
    r"我|俺|咱|家里|家人|老公|老婆|爱人|丈夫|妻子|爸|妈|爷爷|奶奶|外公|外婆|公公|婆婆|姥|儿子|女儿|朋友|同事|室友|"
    r"邻居|男朋友|女朋友|弟|妹|哥|姐|他|她"
)
PREVENTION = re.compile(
    rf"了解一下|提前了解|想了解|出发前|去{_C}{{0,6}}之?前想|提前学|学一下|学学|想学|以防万一|以备|有备无患|备着|安全吗|要注意什么|预防|防止|避免|防范|怎么防|如何防|防(?:中暑|溺水|摔|蛇|烫)|注意什么安全|早点干预|及早发现"
)
# News and media about no one the writer knows are hearsay even when seen "today" (今天看新闻说有人…); a
# bystander who sees someone collapse now ("刚才看到有人倒地") is not media.
MEDIA = re.compile(
    rf"新闻|电视上|网上看到|纪录片|视频里|看到{_C}{{0,3}}视频|视频{_C}{{0,2}}说|刷到|电影里|听说|报道|科普文章|公众号|抖音|微博"
)
HEARSAY = re.compile(
    r"(?:邻居|同事|朋友|别人|人家|亲戚)(?:说|讲)|新闻|电视上|网上看到|纪录片|视频里|刷到|电影里|听说|看到有人|报道|上课讲"
)
PAST = re.compile(
    r"前段时间|前一段时间|前些天|前两天|前几天|有一天|那天|有一次|去年|前年|以前|之前|曾经|小时候|\d+年前|[一两二三四五六七八九十几]+年前|几年前|多年前|上个月|上周|上次|当年|当时|那次|半年前|\d+个月前|既往|有过|得过|"
    r"生孩子的时候|前几年"
)
RESOLVED = re.compile(
    rf"已经好了|好了|恢复|稳定|控制得|正常|退了|出院|之后一直没|后来|救回来|抢救过来|治好|好多了|已经不|停药|拉出来了|"
    rf"偶尔|有时|时不时|很少|少犯|不怎么犯|已经在医院|在医院治疗|送医院了|送到?医院|去了医院|住院|检查|确诊|诊断|医生说|现在{_C}{{0,6}}(?:好|还行|正常|稳定|没事)|复查|康复|后遗症|疤"
)
# A question about caring for a condition already diagnosed ("癫痫病人能结婚吗", "哪家医院治疗X好").
DIAGNOSED = re.compile(
    r"确诊|诊断|查出|检查(?:说|发现|发觉|结果)|医生说是|发觉是|得了|患有|患了|病人|患者|病史|多年|老毛病|一直有|\d+年了|几年了|"
    r"对[^,，。!！?？]{1,6}过敏"
)
CARE_QUESTION = re.compile(
    rf"治疗|治好|根治|医院|费用|多少钱|吃什么|饮食|注意什么|调理|康复|复查|遗传|结婚|生子|能不能|可以{_C}{{0,8}}吗|"
    rf"能{_C}{{0,8}}吗|有用吗|效果|有哪些|是什么|什么是|因素|"
    r"方法|偏方|药物|检查出|预兆|怎么治|如何治|宜食|食疗|吃啥|吃哪些|哪里|哪家|彻底"
)
# Names of conditions people ask about once diagnosed; with a care question the message is about the condition.
CONDITION = re.compile(
    r"癫痫|羊癫疯|高血压|糖尿病|冠心病|心脏病|哮喘|慢阻肺|肝硬化|肝炎|大三阳|小三阳|胃病|胃炎|贫血|偏瘫|脑梗|中风|"
    r"肿瘤|癌|帕金森|肾病|肾衰|尿毒症|红斑狼疮|甲亢|甲减|心衰|心律失常|早搏|房颤|抑郁症|焦虑症|精神分裂"
)
# The same complaint every time ("每个月都这样", "老毛病了"): a chronic pattern to ask about, not an acute event.
RECURRENT = re.compile(
    r"每个月都|每次(?:来)?(?:月经|例假|都)|老毛病|一直都这样|从小就|每年都|经常这样|总是这样"
)
# A symptom that passed within the message itself ("跑步后喘得厉害，一会就好了").
RESOLVED_SAME_MESSAGE = re.compile(
    rf"一会(?:儿)?就(?:好|松|缓过来|过去)|(?:几|一两)秒(?:钟)?就(?:好|过去|缓过来)|休息{_C}{{0,3}}就?好了|"
    rf"(?:已经|马上就|很快就)(?:好了|止住|缓解)|已经{_C}{{0,2}}(?:关|开窗|通风)|就好了|(?:现在|已经|就)没事了?"
)
# The asker ("我想了解", "请问") is not a person the message reports on.
ASKER = re.compile(r"我想(?:多)?(?:了解|知道|问)|请问|我(?:是|们是)医学生|我同学|我老师")
# A message that ends an emergency reported earlier in the conversation.
RESOLUTION = re.compile(
    rf"没事了|好了|缓过来了|缓解了|醒过来了|醒了|止住了|不(?:疼|痛)了|退烧了|烧退了|不抽了|能说话了|"
    rf"救护车{_C}{{0,3}}(?:来了|到了)|(?:已经)?(?:到|在|送到?){_C}{{0,2}}医院了?|医生{_C}{{0,4}}(?:看过|处理|说没事)|"
    rf"出院了|误会|搞错了|虚惊|不是真的|没那么严重"
)

_EVERYDAY_CAUSE = (
    rf"工作|加班|上班|作业|题|考试|考研|学习|老板|房价|价格|账单|游戏|电影|视频|天气|堵车|快递|消息|老师|周一|周末|"
    rf"辣条|火锅|辣|笑|哈哈|剧|小说|开玩笑|玩笑|气得|被{_C}{{0,3}}气|方案|综合症|吓得"
)
_FIGURATIVE = (
    rf"想死|要死|死了|窒息|吐血|心脏骤停|心脏病|脑溢血|血压{_C}{{0,3}}(?:上来|飙|升)|差点晕|快晕|要晕|喘不[上过]气|透不过气|要命|疯|"
    rf"瞎|断|散架|跳楼|跳下去|跳河|去死|不想活|撞墙|天要塌|心脏{_C}{{0,4}}跳出来|中暑|胃疼|肚子疼"
)
# What a degree is said to reach in hyperbole ("哭到抽搐", "熏得我快中毒了", "肚子要爆炸").
_DEGREE_FIGURE = r"抽搐|晕倒|晕过去|中毒|爆炸|炸了|断气|昏过去|心跳骤停|停止呼吸|撑死|去世|升天|归西"
_HYPERBOLE = (
    re.compile(rf"^(?=.*(?:{_EVERYDAY_CAUSE}))(?=.*(?:{_FIGURATIVE})).*$"),
    re.compile(
        rf"(?:累|忙|困|烦|热|冷|冻|晒|渴|吵|饿|撑|饱|无聊|气|骂|笑|吓|闷|辣|难|逼|愁|急|尴尬|丢人|羞|胖|心累|虐|感动|哭)"
        rf"(?:得{_C}{{0,4}}(?:死|窒息|晕|疯|喘不|透不过|吐血|要命)|死(?:了|我|人|啦))"
    ),
    re.compile(r"想死你|想你想死|(?:好|真)想死在床上|想死的心都有"),
    re.compile(rf"得(?:我|人)?{_C}{{0,3}}都(?:要|快)?(?:断|废|瞎|散架|死|疯|炸)"),
    re.compile(r"(?:腿|脚|腰|手|眼睛|脑子)都(?:要|快)(?:断|废|瞎|散架|炸)了"),
    # "开会开得我快窒息了": a degree said as "V得(我)快/要 <figurative>" is hyperbole unless V is itself a
    # symptom (疼得快晕过去, 憋得快窒息, 呛得要死 are reports).
    re.compile(
        rf"(?<![疼痛喘憋咳吐烧晕胀抽呛噎卡闷酸麻痒])得(?:我|人)?都?(?:快|要|快要|差点|都要){_C}{{0,2}}(?:{_FIGURATIVE})"
    ),
    # "帅到我窒息", "好听到我心跳骤停", "哭到抽搐", "熏得我快中毒了": the same with 到, or with the figures of a
    # degree, when what comes before is neither a symptom nor a physical cause (摔到昏迷 is a report) nor a
    # verb of perceiving (觉得快晕倒, 感到喘不上气 are reports)
    re.compile(
        rf"(?<![疼痛喘憋咳吐烧晕胀抽呛噎卡闷酸麻痒摔撞磕跌砸打喝吃电烫觉记显晓懂感看听遇想回来收找受])(?:到|得)(?:我|人)?都?(?:快|要|快要|差点|都要|当场)?"
        rf"{_C}{{0,3}}(?:{_FIGURATIVE}|{_DEGREE_FIGURE})"
    ),
)
# Words of a suicide plan (C-SSRS: method, plan, time): a clause that has them is meant literally.
_PLAN = re.compile(
    r"想好|计划|准备好|怎么死|自杀|遗书|上吊|绳子|安眠药|这个周末|今晚就|明天就|别拦|别找我|别救"
)
# Words of a body or a symptom: "我真的要窒息了" with none of them anywhere else is a figure of speech.
_SYMPTOM = re.compile(
    r"疼|痛|喘|咳|吐|烧|晕|血|肿|麻|抽|昏|憋|胸|心口|头|肚|腹|呼吸|气短|嘴唇|脸色|噎|卡|呛|药|醒|倒|摔|撞|过敏|"
    r"孩子|宝宝|老人|爸|妈"
)
# With an everyday cause anywhere in the message, a consequence said as "要/快/差点/真是 ..." is figurative.
_MODAL_FIGURATIVE = re.compile(rf"(?:要|快|差点|简直|真是|都要|得我|得人){_C}{{0,3}}(?:{_FIGURATIVE})")


# A negation cue ("没有胸痛", "否认外伤"); the words after 没/无 that are themselves danger signs (没反应, 没呼吸,
# 无尿, 没力气) or not negations at all (没想到, 无法) are excluded.
NEGATION_CUE = (
    r"(?:(?:没有|没|无|未|否认|不是|并非|从未|从没)(?!想到|多久|过多久|一会|缘无故|法|论|满|足|数|用|见好|止住|精神|力|劲|"
    r"尿|眼泪|反应|呼吸|心跳|气|了|拉屎|排便|放屁|排气|大便)"
    # "不晕不吐", "不发烧", "不想死": 不 before a symptom denies it (不醒, 不动, 不止, 不能 are signs and stay).
    r"|不(?=晕|吐|呕|发烧|发热|烧|疼|痛|喘|咳|抽|肿|出血|流血|头疼|头痛|胸闷|憋|想死|硬))"
)
# A negation covers the rest of its clause up to a contrast or a sequel ("没发烧可是抽了", "没吃饭就晕倒了") or 12
# characters; "还没到医院" (not yet) and "没人" (nobody) deny nothing about the patient.
_NEGATION_SCOPE = re.compile(
    rf"(?<!还)(?!没人|无人){NEGATION_CUE}((?:(?!但|可是|不过|却|就是|只是|而是|然后|现在|反而|就|又|才){_C}){{1,12}})"
)


def negated_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the words each negation cue in `text` denies, within its clause."""
    return [match.span(1) for match in _NEGATION_SCOPE.finditer(text)]


# Conditional and hypothetical questions ("如果孩子抽搐了怎么办", "万一遇到有人噎住") are preparation, not reports.
# Only a message framed as a condition from its start is one: "孩子胸口疼，要是心梗怎么办" is a report, and so
# is a first-person conditional ("如果我消失了，没人会在意吧" is indirect suicidal talk).
HYPOTHETICAL = re.compile(
    rf"^{_C}{{0,8}}(?:如果|万一|假如|假设|要是|若是|倘若|一旦)(?!我|俺)|(?:遇到|碰到|遇见)(?:有人|别人|这种|这样|路人|陌生人)"
)


# Reassurance a parent or patient adds ("精神很好", "能吃能玩", "说话也清楚"): the danger signs are absent.
REASSURED = re.compile(
    rf"精神{_C}{{0,2}}(?:好|不错|可以|正常)|能吃能(?:喝|玩|睡)|吃奶{_C}{{0,2}}(?:正常|还行|好)|照常|没什么(?:不舒服|感觉)|"
    rf"不影响|活蹦乱跳|该吃吃|(?:说话|意识|神志|头脑|脑子){_C}{{0,2}}清楚|(?:走路|说话|反应|血压|心电图){_C}{{0,3}}(?:正常|都好)|"
    rf"能说能笑|能跑能跳"
)


def cue_features(text: str) -> list[str]:
    """Named speech cues of one normalised message, as features of the learned stage: a linear model cannot
    see "a question about" or "in the past" in single n-grams, so the cues the speech acts use are given."""
    cues = {
        "now": STRONG_NOW,
        "weak_now": WEAK_NOW,
        "past": PAST,
        "resolved": RESOLVED,
        "about": ABOUT,
        "person": PERSON,
        "first_person": FIRST_PERSON,
        "hypothetical": HYPOTHETICAL,
        "prevention": PREVENTION,
        "hearsay": HEARSAY,
        "diagnosed": DIAGNOSED,
        "condition": CONDITION,
        "reassured": REASSURED,
    }
    found = [f"@{name}" for name, pattern in cues.items() if pattern.search(text)]
    if negated_spans(text):
        found.append("@negated")
    return found


def _clauses(text: str) -> list[str]:
    return [c for c in re.split(rf"[{CLAUSE_END}]", text) if c]


def strip_hyperbole(text: str) -> str:
    """`text` without its figurative clauses; a message that says it is joking loses every figurative clause."""
    joking = re.search(r"(?<!不是)(?<!没)(?<!没有)(?:开玩笑|开个玩笑|逗你)|哈哈", text) is not None
    everyday = re.search(_EVERYDAY_CAUSE, text) is not None
    clauses = re.split(rf"(?<=[{CLAUSE_END}])", text)
    hyperbolic = [any(p.search(clause) for p in _HYPERBOLE) for clause in clauses]
    # Once a message with an everyday cause is plainly hyperbolic ("这天气闷死人了"), its other figurative
    # clauses ("喘不过气来") are the same figure of speech.
    loose = joking or (everyday and any(hyperbolic))
    kept = []
    for clause, plain_figure in zip(clauses, hyperbolic, strict=True):
        others = "".join(c for c in clauses if c is not clause)
        if _PLAN.search(clause):  # a method, a plan or a time is never a figure of speech
            kept.append(clause)
            continue
        figurative = (
            plain_figure
            or (loose and re.search(rf"{_FIGURATIVE}|{_DEGREE_FIGURE}", clause) is not None)
            or (
                _MODAL_FIGURATIVE.search(clause) is not None
                and (everyday or not _SYMPTOM.search(_MODAL_FIGURATIVE.sub("", clause) + others))
            )
        )
        if not figurative:
            kept.append(clause)
    return "".join(kept)


def speech_act(text: str) -> Act:
    """What one normalised user message does (see the module docstring)."""
    if EXAM.search(text) or (CASE_VIGNETTE.search(text) and not FIRST_PERSON.search(text)):
        return Act.EXAM
    if MEDIA.search(text) and not PERSON.search(ASKER.sub("", MEDIA.sub("", text))):
        return Act.HEARSAY
    if STRONG_NOW.search(text):
        return Act.REPORT
    if HYPOTHETICAL.search(text):
        return Act.PREVENTION
    if (PAST.search(text) and RESOLVED.search(text)) or RESOLVED_SAME_MESSAGE.search(text):
        return Act.PAST
    asks_about = ABOUT.search(text) and not PERSON.search(ASKER.sub("", text))
    if asks_about and not WEAK_NOW.search(text):
        return Act.ABOUT
    if RECURRENT.search(text) or (
        CARE_QUESTION.search(text) and (DIAGNOSED.search(text) or CONDITION.search(text))
    ):
        return Act.DIAGNOSED
    if WEAK_NOW.search(text):
        return Act.REPORT
    if HEARSAY.search(text):
        return Act.HEARSAY
    if PREVENTION.search(text):
        return Act.PREVENTION
    return Act.ABOUT if asks_about else Act.REPORT


def is_resolution(text: str) -> bool:
    """Whether a normalised user message says an emergency is over or in a clinician's hands."""
    return bool(RESOLUTION.search(text))
