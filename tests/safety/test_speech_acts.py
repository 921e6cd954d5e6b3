"""Speech acts: a report of something happening now versus talk about a condition; hyperbole stripped."""

import pytest

from wenzhen.safety.normalise import normalise
from wenzhen.safety.speech import Act, is_resolution, speech_act, strip_hyperbole


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
    ],
)
def test_strip_hyperbole(text: str, kept: str) -> None:
    assert strip_hyperbole(text) == kept


def test_resolution() -> None:
    assert is_resolution(normalise("醒过来了，救护车也到了"))
    assert not is_resolution(normalise("还是叫不醒"))
