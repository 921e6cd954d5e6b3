"""Each cleaning rule on its own, and the Cleaner's order and counts."""

from collections import Counter

import pytest

from wenzhen.data.cleaning import (
    DEFAULT_AD_PATTERNS,
    Cleaner,
    build_ad_remover,
    build_ending_rule,
    build_pii_masker,
    merge_turns,
    normalise_text,
    strip_html,
)
from wenzhen.data.config import CleaningConfig
from wenzhen.data.records import Record


def record(*turns: tuple[str, str], title: str | None = None) -> Record:
    return Record("test", 1, None, [{"role": role, "content": text} for role, text in turns], title=title)


def test_normalise_keeps_chinese_punctuation_and_tidies_whitespace() -> None:
    counts: Counter[str] = Counter()
    text = "\u3000\u3000您好，血压１４０／９０ｍｍＨｇ！\r\n\r\n\r\n  注意  休息。\u200b "
    assert normalise_text(text, counts) == "您好，血压140／90mmHg！\n\n注意 休息。"
    assert counts["normalize.changed"] == 1
    assert (
        normalise_text("已经干净的文本。", counts) == "已经干净的文本。" and counts["normalize.changed"] == 1
    )


def test_strip_html_tags_and_entities() -> None:
    counts: Counter[str] = Counter()
    assert (
        strip_html("第一行<br/>第二行<b>重点</b>&ldquo;引号&rdquo; 血糖&lt;7", counts)
        == "第一行\n第二行重点“引号” 血糖<7"
    )
    assert strip_html("血糖<7也正常", counts) == "血糖<7也正常"
    assert counts["strip_html.changed"] == 1


def test_ads_cut_from_clause_to_sentence_end() -> None:
    counts: Counter[str] = Counter()
    remove = build_ad_remover(DEFAULT_AD_PATTERNS)
    text = "轻度脂肪肝以饮食运动为主，这样吧，建议你方便的话可以直接点击我实施在线交流，交流下来更加方便。注意复查。"
    assert remove(text, counts) == "轻度脂肪肝以饮食运动为主，这样吧，注意复查。"
    assert remove("多喝水，有疑虑可点击咨询，祝你早日康复。", counts) == "多喝水。"
    assert remove("感谢您的进行咨询，期望我的解释对你有所帮助。", counts) == ""
    assert remove("没有广告的回答。", counts) == "没有广告的回答。"
    assert counts["ads.removed"] == 3


def test_pii_masking_counts_each_kind() -> None:
    counts: Counter[str] = Counter()
    mask = build_pii_masker(["phone", "id_card", "email", "url"])
    text = "电话13812345678或010-12345678，身份证11010519491231002X，邮箱a.b@example.com，见https://x.cn/a?b=1。血压140/90，住院12天。"
    assert (
        mask(text, counts)
        == "电话[电话]或[电话]，身份证[身份证号]，邮箱[邮箱]，见[网址]。血压140/90，住院12天。"
    )
    assert counts == Counter(
        {"mask_pii.phone": 2, "mask_pii.id_card": 1, "mask_pii.email": 1, "mask_pii.url": 1}
    )
    only_phone = build_pii_masker(["phone"])
    assert only_phone("a@b.com 13812345678", Counter()) == "a@b.com [电话]"


def test_placeholder_question_uses_title_or_rejects() -> None:
    cleaner = Cleaner(CleaningConfig())
    fixed = record(("user", "无"), ("assistant", "多休息。"), title="偏头痛怎么办")
    assert cleaner.clean(fixed) is None and fixed.messages[0]["content"] == "偏头痛怎么办"
    assert cleaner.clean(record(("user", "如题。"), ("assistant", "多休息。"))) == "placeholder_question"
    assert cleaner.counts["placeholders.replaced_by_title"] == 1
    off = Cleaner(CleaningConfig(placeholders={"enabled": False}))
    assert off.clean(record(("user", "无"), ("assistant", "多休息。"))) is None


def test_merge_and_ending_rules() -> None:
    counts: Counter[str] = Counter()
    rec = record(("user", "胃疼"), ("user", "饭前疼"), ("assistant", "建议胃镜"), ("user", "谢谢"))
    merge_turns(rec, counts)
    assert rec.messages[0]["content"] == "胃疼\n饭前疼" and counts["merge_turns.merged"] == 1
    assert build_ending_rule("drop")(rec, counts) == "ends_on_user_turn"
    assert build_ending_rule("trim")(rec, counts) is None
    assert [m["role"] for m in rec.messages] == ["user", "assistant"] and counts["ending.trimmed"] == 1
    assert (
        build_ending_rule("trim")(record(("assistant", "您好"), ("user", "头疼")), counts)
        == "starts_without_user_turn"
    )


def test_cleaner_rejects_empty_answers_and_misplaced_system_turns() -> None:
    cleaner = Cleaner(CleaningConfig())
    assert cleaner.clean(record(("user", "头疼怎么办"), ("assistant", "  \u3000 "))) == "empty_answer"
    assert (
        cleaner.clean(record(("user", "头疼"), ("system", "你是医生"), ("assistant", "休息")))
        == "misplaced_system_turn"
    )


@pytest.mark.parametrize(
    "rule", ["normalize", "strip_html", "ads", "mask_pii", "placeholders", "merge_turns"]
)
def test_every_switchable_rule_can_be_turned_off(rule: str) -> None:
    settings = {
        "normalize": {"normalize": False},
        "strip_html": {"strip_html": False},
        "ads": {"ads": {"enabled": False}},
        "mask_pii": {"mask_pii": {"enabled": False}},
        "placeholders": {"placeholders": {"enabled": False}},
        "merge_turns": {"merge_turns": False},
    }[rule]
    assert rule in Cleaner(CleaningConfig()).names
    assert rule not in Cleaner(CleaningConfig.model_validate(settings)).names


def test_extra_ad_patterns_from_config() -> None:
    cleaner = Cleaner(CleaningConfig(ads={"patterns": ["本院专家团队"]}))
    rec = record(("user", "头疼"), ("assistant", "多休息。欢迎来本院专家团队就诊。"))
    assert cleaner.clean(rec) is None and rec.messages[1]["content"] == "多休息。"
