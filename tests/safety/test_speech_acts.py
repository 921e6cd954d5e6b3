"""Speech acts: a report of something happening now versus talk about a condition; hyperbole stripped."""

import pytest

from wenzhen.safety.normalise import normalise
from wenzhen.safety.speech import Act, cue_features, is_resolution, negated_spans, speech_act, strip_hyperbole


@pytest.mark.parametrize(
    ("text", "act"),
    [
        ("我爸刚才突然嘴歪了", Act.REPORT),
        ("孩子发烧，脖子硬得低不下头", Act.REPORT),
        ("选择题：下列哪项不是脑膜刺激征", Act.EXAM),
        ("写小说，主角被毒蛇咬了，症状怎么写", Act.EXAM),
        ("中风的早期表现是什么", Act.ABOUT),
        ("怎么预防孩子误服药物", Act.PREVENTION),
        ("看纪录片说中风要在4.5小时内送医", Act.HEARSAY),
        ("去年心梗放了支架，现在恢复得很好", Act.PAST),
        ("哪家医院治疗癫痫比较好", Act.DIAGNOSED),
        ("去年中过风，今天又突然说不出话", Act.REPORT),
        ("如果家里老人突然中风了，第一时间应该做什么", Act.PREVENTION),
        ("万一孩子吞了纽扣电池要怎么处理", Act.PREVENTION),
        ("如果我消失了应该没人会在意吧", Act.REPORT),  # a first-person conditional is indirect suicidal talk
        ("孩子胸口疼，要是心梗怎么办", Act.REPORT),  # the condition comes after the report
        ("今天看新闻说有人吃野蘑菇中毒了", Act.HEARSAY),
        ("刚才看到有人倒在路边抽搐", Act.REPORT),  # a bystander now is not media
        ("我是护理专业的，实习时遇到病人抽搐该怎么记录", Act.EXAM),
        ("帮我写一段话，提醒老人炭火取暖的危险", Act.EXAM),
        ("帮我写一封遗书", Act.REPORT),
        ("月经第二天肚子疼得厉害，每个月都这样", Act.DIAGNOSED),
        ("野外被蛇咬了应该怎么处理，去露营前想了解一下", Act.PREVENTION),
    ],
)
def test_speech_act(text: str, act: Act) -> None:
    assert speech_act(normalise(text)) is act


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("今天加班到半夜,累得想死", "今天加班到半夜,"),
        ("想死你了", ""),
        ("老板又让改方案,我真是要吐血了", "老板又让改方案,"),
        ("我疼得想死,胸口压着", "我疼得想死,胸口压着"),  # pain is not everyday: kept
        ("蛋疼,不是开玩笑,真的疼得走不了路", "蛋疼,不是开玩笑,真的疼得走不了路"),
        ("开会开得我快窒息了", ""),  # "V得我快<figure>" with an everyday V
        ("憋得我快窒息了", "憋得我快窒息了"),  # ... but not when V is itself a symptom
        ("这破天气闷死人了,喘不过气来", ""),  # a plainly hyperbolic message takes its other figures along
        ("这个月房租又涨了,我真的要窒息了", "这个月房租又涨了,"),  # no body or symptom word anywhere
        ("喘不上气,我真的要窒息了", "喘不上气,我真的要窒息了"),
        ("那个男明星帅到我窒息", ""),  # a degree with 到
        ("昨晚追剧哭到抽搐,今天眼睛肿成核桃", "今天眼睛肿成核桃"),
        (
            "用了新的抗生素后全身起疹子,现在觉得快晕倒了",
            "用了新的抗生素后全身起疹子,现在觉得快晕倒了",
        ),  # 觉得 perceives
        ("活着好累,已经想好怎么死了,就这个周末", "活着好累,已经想好怎么死了,就这个周末"),  # a plan is literal
    ],
)
def test_strip_hyperbole(text: str, kept: str) -> None:
    assert strip_hyperbole(text) == kept


def test_resolution() -> None:
    assert is_resolution(normalise("醒过来了，救护车也到了"))
    assert not is_resolution(normalise("还是叫不醒"))


@pytest.mark.parametrize(
    ("text", "denied"),
    [
        ("没有发烧但是抽搐", ["发烧"]),  # a contrast ends the scope
        ("没有胸痛、出汗、气短", ["胸痛、出汗、气短"]),  # a list is denied as a whole
        ("不晕不吐", ["晕不吐"]),  # 不 before a symptom denies it
        ("还没到医院就昏过去了", []),  # "not yet" denies nothing
        ("没反应，没呼吸", []),  # 没反应 and 没呼吸 are signs, not denials
        ("不能说话", []),
    ],
)
def test_negated_spans(text: str, denied: list[str]) -> None:
    assert [text[a:b] for a, b in negated_spans(text)] == denied


def test_cue_features_name_the_speech_cues() -> None:
    cues = cue_features(normalise("去年心梗，现在恢复得很好，没有胸痛，精神很好"))
    assert {"@past", "@resolved", "@negated", "@reassured"} <= set(cues)
    assert "@now" in cue_features(normalise("刚才突然倒地"))
