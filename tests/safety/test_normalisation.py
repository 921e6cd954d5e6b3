"""Normalisation before matching: scripts, forms, dialect, numbers, and parsed measurements."""

import pytest

from wenzhen.safety.normalise import measurement_facts, normalise


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("我媽胸悶氣短，出冷汗", "我妈胸闷气短,出冷汗"),  # traditional, full-width comma
        ("ＴＡ在抽搐", "ta在抽搐"),  # full-width letters
        ("体温三十八度五", "体温38.5度"),
        ("血压两百二", "血压220"),
        ("宝宝两个月零五天，体温一百零一华氏度", "宝宝2个月5天,体温101华氏度"),
        ("血糖二点八", "血糖2.8"),
        ("百草枯，一边脸，一下子", "百草枯,一边脸,一下子"),  # words that only contain numerals stay
        ("xiongkou teng de lihai, chu leng han", "胸口痛得厉害,出冷汗"),  # pinyin
        ("chest pain 40 mins", "胸痛40分钟"),  # English
        ("阿嬷讲唔出话，佢面青青", "阿嬷说不出话,他脸色发青"),  # Cantonese
        ("娃儿抽风了", "孩子抽搐了"),
        (
            "外婆突然听不懂了 右手也软了",
            "外婆突然听不懂了，右手也软了",
        ),  # a space between Chinese words ends a clause
        ("右侧 testicle 剧痛", "右侧睾丸剧痛"),  # spaces around English are the English word's
        ("阿婆食咗啲唔知咩藥 而家嘔緊", "阿婆吃了些不知道什么药，现在在吐"),  # Cantonese
        ("老汉儿嘴皮乌起的", "爸爸嘴唇发紫起的"),  # south-western
        ("sugar 1.9 在发抖", "血糖1.9在发抖"),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fact"),
    [
        ("测了血糖才45mg/dL", "血糖危急低"),
        ("血糖1.9", "血糖危急低"),
        ("血糖仪显示HI", "血糖危急高"),
        ("血糖28", "血糖很高"),
        ("我爸有糖尿病，刚才测了是2.5", "血糖危急低"),
        ("量血压190/125", "血压危急高"),
        ("高压一百九十多，低压一百二", "血压危急高"),
        ("血压210/130", "血压极高"),
        ("血压80/50", "血压过低"),
        ("体温104°F", "体温极高"),
        ("baby 6 weeks old, fever 101°F", "婴儿小于3个月"),
        ("出生二十天的宝宝", "婴儿小于3个月"),
        ("胸口疼了半个多小时", "持续超过15分钟"),
    ],
)
def test_measurements(raw: str, fact: str) -> None:
    assert fact in measurement_facts(normalise(raw))


@pytest.mark.parametrize("raw", ["血糖5.6", "血压130/85", "体温37.2度", "宝宝七个月", "量了体温38度"])
def test_ordinary_measurements_name_no_danger(raw: str) -> None:
    facts = measurement_facts(normalise(raw))
    assert not {"血糖危急低", "血糖危急高", "血压危急高", "血压极高", "体温极高", "婴儿小于3个月"} & set(
        facts
    )
