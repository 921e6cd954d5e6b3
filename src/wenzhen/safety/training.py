"""Build the guard's training set and train its learned stage (`classifier.NgramClassifier`).

    python -m wenzhen.safety.training --shared ../shared --out src/wenzhen/resources/safety/classifier.npz

The set (all texts normalised and hyperbole-stripped as the guard does before scoring):

- **labelled**: the hand-written red-flag and ordinary messages in `resources/safety/` (the project's probe
  batches are folded in there after their first measurement);
- **generated emergencies**: each category's discriminators in patient frames (who, when, how they ask), and
  new messages recombined from clauses of different labelled messages of the same category;
- **generated hard negatives**: questions about each condition, exam and teaching contexts, prevention, past
  resolved history and negated discriminators, written from the category table;
- **background**: real consultation questions of the `train` split of the bundled corpora
  (`corpora.consultation_questions`), as "none" — except those the rules fire on, which are left out rather
  than labelled either way.

A seeded 80/20 split holds out data; the model is trained on the 80% by full-batch-per-chunk gradient
descent (Adam, L2), and the threshold is the lowest score at which at most `TARGET_FALSE_ALARM` of held-out
"none" texts fire. Everything is seeded, so retraining reproduces the shipped weights (a test checks it).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from wenzhen.safety import speech
from wenzhen.safety.categories import CATEGORIES, CLAUSE_END
from wenzhen.safety.classifier import MIN_CHARS, NONE, NgramClassifier, features
from wenzhen.safety.corpora import consultation_questions
from wenzhen.safety.normalise import normalise

SEED = 13
HELD_OUT = 0.2
MAX_VOCABULARY = 12000
MIN_COUNT = 3
EPOCHS = 12
CHUNK = 512
LEARNING_RATE = 0.05
L2 = 1e-5
# At most this share of held-out "none" texts may fire. All "none" kinds (hand-written and generated hard
# negatives, real consultation questions) are one pool: separate per-kind cuts sat on a few top scores of small
# pools and moved the threshold between 0.50 and 0.89 from one retrain to the next (leave-one-batch-out).
TARGET_FALSE_ALARM = {"none": 0.01}
POOL = {"labelled": "none", "generated": "none", "background": "none"}


WHO = ("我", "我爸", "我妈", "孩子", "老公", "老婆", "奶奶", "爷爷", "宝宝", "家里老人", "同事", "我朋友", "")
WHEN = ("刚才", "突然", "现在", "今天", "半小时前开始", "")
ASK = ("怎么办", "要紧吗", "急！", "在线等", "", "需要去医院吗", "该怎么处理", "？")
ABOUT_FRAMES = (
    "{c}有哪些症状？",
    "{c}是怎么引起的",
    "{c}的早期表现是什么",
    "{c}能治好吗",
    "{c}和普通的病怎么区分",
    "怎么预防{c}",
    "如何避免{c}，平时要注意什么",
    "考试题：{c}的急救原则是什么",
    "护理学作业：{c}患者的护理要点",
    "我是医学生，想了解{c}的发病机制",
    "去年得过{c}，现在恢复得很好，饮食上注意什么",
    "我爸以前{c}住过院，现在控制得很稳定，还要复查吗",
    "新闻里说有人{c}，我有点害怕，平时怎么预防",
    "{c}病人能吃什么水果",
)
# More ways of asking about a condition without reporting one, the way people type them into a search box.
ABOUT_MORE = (
    "{c}是怎么回事",
    "{c}多久能好",
    "{c}会遗传吗",
    "{c}挂什么科",
    "{c}要做哪些检查",
    "{c}能活多久",
    "得了{c}还能运动吗",
    "{c}吃什么药好",
    "{c}严重吗，死亡率高不高",
    "{c}一般多大年纪的人容易得",
    "{c}会复发吗",
    "{c}的急救措施有哪些",
    "家里老人有{c}的风险吗，怎么早点发现",
    "帮朋友问一下，{c}要住院多久",
)
# A condition asked "if" or written into a story is preparation or fiction, not a report.
HYPOTHETICAL_FRAMES = (
    "如果{who}{d}，应该怎么办",
    "万一{d}，家里人应该先做什么",
    "假如遇到有人{d}，怎么急救",
    "要是半夜{d}，是先打120还是自己去医院",
    "我在写小说，里面的人物{d}，这样写合理吗",
    "写一个小故事：主角的{who}突然{d}，大家怎么救他",
    "拍短剧要演{d}的样子，怎么演才像",
)
# Past episodes that are over, told with different time words.
PAST_FRAMES = (
    "{who}{year}{d}过一次，后来住院治好了，现在复查都正常，想问饮食要注意什么",
    "小时候{d}过，已经很多年没犯了，现在能正常上班吗",
    "{who}{year}因为{d}抢救过来了，现在恢复得不错，平时锻炼有什么讲究",
    "{year}{d}，当时去医院处理了，这次体检想顺便问问会不会有后遗症",
)
YEARS = ("去年", "前年", "三年前", "小时候", "上个月", "前几年", "2019年", "那年")
# Mild complaints with the danger signs explicitly denied: the negation carries the meaning.
DENIED_FRAMES = (
    "{who}{mild}，没有{d}，也没有{d2}，需要去医院吗",
    "{mild}，不过没有{d}，精神也挺好",
    "{who}{mild}两天了，无{d}，能先在家观察吗",
    "医生问有没有{d}，我说没有，就是{mild}",
    "{who}{mild}，没有{d}，说话也清楚，走路正常",
    "{who}{mild}，但没有{d}，也没有{d2}，量了血压正常",
)
# Chronic conditions with measured numbers below the danger thresholds.
CHRONIC_FRAMES = (
    "高血压{years}了，平时血压{sys}/{dia}左右，吃着药，能喝点酒吗",
    "{who}糖尿病{years}，空腹血糖{glucose}，餐后{after}，需要换药吗",
    "体检血压{sys}/{dia}，没有不舒服，要吃药吗",
    "{who}血糖{glucose}，平时吃二甲双胍，饮食怎么控制",
    "孩子体温{temp}度，精神很好，能吃能玩，要紧吗",
    "{who}有点头晕，量了血压{sys}/{dia}，要紧吗",
    "头有点痛，血压{sys}/{dia}，说话走路都正常",
    "有点心慌，测了血糖{glucose}，正常吗",
    "宝宝{months}个月，发烧{temp}度，怎么办",
    "{months}个月的孩子低烧，精神还行",
)
# Everyday causes and figurative consequences, recombined: "X得我Y" is hyperbole in any pairing.
EVERYDAY = ("加班", "考试", "老板", "房贷", "孩子写作业", "堵车", "追剧", "开会", "这天气", "改论文")
FIGURATIVE = ("累得想死", "快窒息了", "气得吐血", "烦得要命", "血压都上来了", "心脏病都要犯了", "头都要炸了")
# Style perturbations: how people actually type (no punctuation, spaces, repeated marks, colloquial words).
COLLOQUIAL = (("怎么", "咋"), ("什么", "啥"), ("吗", "嘛"), ("了", "啦"), ("现在", "这会儿"), ("孩子", "娃"))
# Negations of every sign are always written: the n-gram model has no other way to learn that "没有" undoes
# the words after it.
NEGATION_FRAMES = ("没有{d}，就是有点累", "我没有{d}，只是最近睡不好", "{who}并没有{d}，精神还可以")
SIGN_FRAMES = (
    "以前有过{d}，后来治好了，现在没什么不舒服",
    "{d}是什么病的表现？考试会考吗",
    "急救课上老师讲了{d}该怎么处理，我没记住",
    "怎么预防{d}",
)
# Everyday complaints in the same patient frames as the emergencies, so that "who" and "when" words
# (宝宝, 我爸, 刚才) carry no weight of their own.
MILD = (
    "流鼻涕打喷嚏",
    "咳嗽两天了",
    "吐奶了一次",
    "有点拉肚子",
    "低烧37.5度",
    "嗓子有点疼",
    "头有点晕，没睡好",
    "膝盖有点疼",
    "胃有点胀",
    "皮肤起了几个红疹",
    "便秘三天",
    "牙龈出血",
    "脸上长痘",
    "有点失眠",
    "眼睛干涩",
    "腰酸背痛",
    "手指划了个小口子",
    "被蚊子咬了个包",
    "吃完饭反酸",
    "有点耳鸣",
    "偏头痛又犯了，吃了药在休息",
    "感冒了，鼻塞",
    "肚子有点隐隐作痛，拉完就好了",
    "血压145/90",
    "空腹血糖6.5",
    "月经推迟了一周",
    "脚踝扭了一下，能走路",
    "体检发现结节",
    "老是打嗝",
    "晚上小腿抽筋",
    "两个月大，体温36.8度，鼻子有点堵",
    "发烧几度需要去医院",
)
# Minor complaints that share words with emergencies (blood, chest, head blow, vomiting, fever, a fall):
# the words of an emergency at a harmless size, resolved, or with the danger signs absent.
NEAR_MISS = (
    "切菜切到手指，流了一点血，已经止住了",
    "鼻子出了点血，按了几分钟就停了",
    "咳嗽痰里有一点血丝",
    "刷牙牙龈出了点血",
    "胸口偶尔刺痛一下，几秒就好",
    "爬楼有点喘，歇一下就好了",
    "头磕了一下起了个包，不晕不吐",
    "孩子摔了一跤膝盖擦破皮",
    "吐了一次，吐完就舒服了",
    "发烧38度，精神还可以，能吃能喝",
    "肚子有点疼，拉完就好了",
    "被开水烫了一下，手背红了一小块",
    "眼睛进了沙子，冲了一下好多了",
    "手有点麻，甩一甩就好",
    "蹲久了站起来眼前一黑，马上就好了",
    "晚上睡觉小腿抽筋",
    "吃鱼被小刺卡了一下，咽了口饭下去了",
    "被蜜蜂蛰了一下，起了个小包",
    "吃了海鲜身上有几个小疙瘩，有点痒",
    "量血压135/85，有点担心",
    "空腹血糖6.8，有点高",
    "心跳有点快，喝了咖啡",
    "有点头晕，可能是没吃早饭",
    "月经量比平时多一点",
    "宝宝打完疫苗有点低烧，吃奶正常",
    "喝酒后脸红心跳",
    "情绪有点低落，想找人聊聊",
    "最近压力大，睡不好",
    "吃多了胃里烧得慌，反酸",
    "打呼噜很响，有时候憋醒",
    "肚子胀气，老放屁",
    "耳朵疼，游泳之后开始的",
)
# Everyday events with nothing medical in them: what is left of a message once its hyperbole is stripped.
EVERYDAY_LIFE = (
    "今天上班被领导骂了",
    "和老公吵了一架",
    "孩子考试没考好",
    "加班到晚上十点",
    "堵车堵了两个小时",
    "下雨淋湿了",
    "手机摔坏了",
    "搬家累了一天",
    "期末周天天熬夜复习",
    "追剧追到半夜",
    "开了一下午的会",
    "房贷压力好大",
    "装修吵得不行",
    "排队排了一上午",
    "被孩子的作业折磨",
    "今天跑了五公里",
)
# Hyperbole is stripped before scoring; what is left of it ("今天加班到半夜，") must read as "none".
HYPERBOLE = (
    "今天加班到半夜，累得想死",
    "想死你了，什么时候回来看看我们",
    "这个月的作业多得我快窒息了",
    "老板又让改方案，气得我要吐血",
    "刷到一个视频，笑死我了哈哈",
    "热死了，今天空调坏了",
    "被孩子气得心脏病都要犯了，作业写到十点",
    "下班路上堵车堵得我血压都上来了",
    "饿死了，晚上吃什么比较健康",
    "无聊死了，周末在家干点啥",
    "这道数学题难得我想撞墙",
    "看到这个月的账单，吓得我差点晕倒",
    "这个房价，简直让人心脏骤停",
    "等快递等得我要疯了",
)


@dataclass(frozen=True)
class Example:
    """One training text (already normalised) and its class."""

    text: str
    label: str
    kind: str = "labelled"  # labelled, generated or background: the threshold is chosen on each "none" kind


def _read_labelled(name: str) -> list[dict]:
    text = (resources.files("wenzhen") / "resources" / "safety" / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _prepared(text: str) -> str:
    return speech.strip_hyperbole(normalise(text))


def _clauses(text: str) -> list[str]:
    pieces = [text]
    for mark in CLAUSE_END:
        pieces = [p for piece in pieces for p in piece.split(mark)]
    return [p for p in pieces if p.strip()]


def perturb(rng: random.Random, text: str) -> str:
    """`text` typed differently: punctuation dropped or spaced, marks repeated, colloquial words."""
    for formal, colloquial in COLLOQUIAL:
        if formal in text and rng.random() < 0.3:
            text = text.replace(formal, colloquial)
    style = rng.randrange(4)
    if style == 0:
        text = "".join(ch for ch in text if ch not in CLAUSE_END)
    elif style == 1:
        text = "".join(" " if ch in CLAUSE_END else ch for ch in text).strip()
    elif style == 2:
        text = text.rstrip(CLAUSE_END) + rng.choice(("！！！", "？？", "。。。", "啊", "呀"))
    return text


def emergencies(rng: random.Random, labelled: list[dict]) -> list[Example]:
    """Generated emergencies: discriminators in patient frames and recombined labelled clauses."""
    examples = []
    by_category: dict[str, list[str]] = {}
    for row in labelled:
        by_category.setdefault(row["category"], []).extend(_clauses(row["text"]))
    for name, category in CATEGORIES.items():
        for sign in category.discriminators:
            for _ in range(12):
                text = f"{rng.choice(WHO)}{rng.choice(WHEN)}{sign}，{rng.choice(ASK)}"
                examples.append(Example(_prepared(text), name, "generated"))
                examples.append(Example(_prepared(perturb(rng, text)), name, "generated"))
            for _ in range(4):  # a denied ordinary sign does not undo the emergency after it
                text = f"{rng.choice(WHO)}没有{rng.choice(MILD)}，但是{rng.choice(WHEN)}{sign}，{rng.choice(ASK)}"
                examples.append(Example(_prepared(text), name, "generated"))
        clauses = by_category.get(name, [])
        for _ in range(60 if len(clauses) >= 4 else 0):
            picked = rng.sample(clauses, min(len(clauses), rng.choice((2, 2, 3))))
            examples.append(Example(_prepared("，".join(picked) + rng.choice(ASK)), name, "generated"))
    return examples


def hard_negatives(rng: random.Random) -> list[Example]:
    """Generated questions about conditions, exams, prevention, history, negations and hyperbole."""
    examples = []
    for _, category in CATEGORIES.items():
        for condition in category.conditions:
            for frame in rng.sample(ABOUT_FRAMES, 6):
                examples.append(Example(_prepared(frame.format(c=condition)), NONE, "generated"))
        for sign in category.discriminators:
            for frame in rng.sample(SIGN_FRAMES, 2):
                examples.append(Example(_prepared(frame.format(d=sign)), NONE, "generated"))
            for frame in NEGATION_FRAMES:
                text = frame.format(d=sign, who=rng.choice(WHO))
                examples.append(Example(_prepared(text), NONE, "generated"))
    examples += [Example(_prepared(text), NONE, "generated") for text in HYPERBOLE]
    examples += [Example(_prepared(t), NONE, "generated") for t in _more_negatives(rng)]
    for complaint in (*NEAR_MISS, *EVERYDAY_LIFE):
        for _ in range(8):
            text = f"{rng.choice(WHO)}{rng.choice(WHEN)}{complaint}，{rng.choice(ASK)}"
            examples.append(Example(_prepared(perturb(rng, text)), NONE, "generated"))
    for complaint in MILD:
        for _ in range(12):
            text = f"{rng.choice(WHO)}{rng.choice(WHEN)}{complaint}，{rng.choice(ASK)}"
            examples.append(Example(_prepared(text), NONE, "generated"))
    return examples


def _more_negatives(rng: random.Random) -> list[str]:
    """Questions about, hypotheticals, fiction, past episodes, denied signs, chronic numbers and hyperbole,
    from every category's conditions and discriminators, some of them perturbed."""
    conditions = [c for _, category in CATEGORIES.items() for c in category.conditions]
    signs = [d for _, category in CATEGORIES.items() for d in category.discriminators]
    texts = [frame.format(c=c) for c in conditions for frame in rng.sample(ABOUT_MORE, 5)]
    for sign in signs:
        texts += [f.format(d=sign, who=rng.choice(WHO)) for f in rng.sample(HYPOTHETICAL_FRAMES, 3)]
        texts += [
            f.format(d=sign, who=rng.choice(WHO), year=rng.choice(YEARS)) for f in rng.sample(PAST_FRAMES, 2)
        ]
        for frame in rng.sample(DENIED_FRAMES, 2):
            texts.append(
                frame.format(d=sign, d2=rng.choice(signs), who=rng.choice(WHO), mild=rng.choice(MILD))
            )
    for _ in range(300):
        texts.append(
            rng.choice(CHRONIC_FRAMES).format(
                who=rng.choice(WHO),
                years=rng.choice(("三年", "十年", "5年", "好几年")),
                sys=rng.randrange(120, 170),
                dia=rng.randrange(70, 105),
                glucose=round(rng.uniform(5.0, 12.0), 1),
                after=round(rng.uniform(7.0, 15.0), 1),
                temp=round(rng.uniform(36.5, 38.4), 1),
                months=rng.randrange(4, 30),
            )
        )
    texts += [f"{cause}{figure}" for cause in EVERYDAY for figure in FIGURATIVE]
    return texts + [perturb(rng, t) for t in rng.sample(texts, len(texts) // 3)]


def background(shared_dir: Path, rules_fire: Callable[[str], bool]) -> list[Example]:
    """Real consultation questions (train split) as "none", without those the rules fire on."""
    texts = [t for t in consultation_questions(shared_dir, "train") if not rules_fire(t)]
    examples = [Example(_prepared(t), NONE, "background") for t in texts]
    # Single clauses too, so that short everyday messages ("周末太短了") read as "none".
    rng = random.Random(SEED)
    clauses = [c for t in rng.sample(texts, min(len(texts), 3000)) for c in rng.sample(_clauses(t), 1)]
    return examples + [Example(_prepared(c), NONE, "background") for c in clauses]


def build_examples(shared_dir: Path, exclude: frozenset[str] = frozenset()) -> list[Example]:
    """The whole training set, in a fixed order; labelled messages whose text is in `exclude` are left out
    (leave-one-batch-out: a probe batch measured without the classifier having seen it)."""
    from wenzhen.safety.guard import Guard, SafetyConfig

    rules_only = Guard(SafetyConfig(classifier=False))
    rng = random.Random(SEED)
    red = [r for r in _read_labelled("red_flag.jsonl") if r["text"] not in exclude]
    ordinary = [r for r in _read_labelled("ordinary.jsonl") if r["text"] not in exclude]
    examples = [Example(_prepared(r["text"]), r["category"]) for r in red if r["category"] in CATEGORIES]
    examples += [Example(_prepared(r["text"]), NONE) for r in ordinary]
    examples += emergencies(rng, red)
    examples += hard_negatives(rng)
    examples += background(shared_dir, lambda t: rules_only.check([{"role": "user", "content": t}]).fired)
    return [e for e in examples if len(e.text) >= MIN_CHARS]


def _vocabulary(texts: list[list[str]]) -> dict[str, int]:
    counts = Counter(g for grams in texts for g in grams)
    kept = sorted((g for g, n in counts.items() if n >= MIN_COUNT), key=lambda g: (-counts[g], g))
    return {g: i for i, g in enumerate(sorted(kept[:MAX_VOCABULARY]))}


def _dense(rows: list[list[int]], width: int) -> np.ndarray:
    matrix = np.zeros((len(rows), width), dtype=np.float32)
    for i, cols in enumerate(rows):
        matrix[i, cols] = 1.0
    return matrix


def _fit(
    rows: list[list[int]], labels: np.ndarray, width: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression by Adam over seeded chunks; class-balanced so rare categories are learnt."""
    rng = np.random.default_rng(SEED)
    weights = np.zeros((width, classes), dtype=np.float32)
    bias = np.zeros(classes, dtype=np.float32)
    counts = np.bincount(labels, minlength=classes).astype(np.float32)
    class_weight = (len(labels) / (classes * np.maximum(counts, 1))) ** 0.5
    moments = [np.zeros_like(weights), np.zeros_like(weights), np.zeros_like(bias), np.zeros_like(bias)]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), CHUNK):
            index = order[start : start + CHUNK]
            x = _dense([rows[i] for i in index], width)
            logits = x @ weights + bias
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            target = np.zeros_like(probs)
            target[np.arange(len(index)), labels[index]] = 1.0
            error = (probs - target) * class_weight[labels[index]][:, None] / len(index)
            grads = (x.T @ error + L2 * weights, error.sum(axis=0))
            step += 1
            for k, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
                m, v = moments[2 * k], moments[2 * k + 1]
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                param -= LEARNING_RATE * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return weights, bias


def train(
    shared_dir: str | Path, exclude: frozenset[str] = frozenset()
) -> tuple[NgramClassifier, dict[str, float]]:
    """Train on the seeded 80% split, choose the threshold on the 20%, and report held-out figures;
    `exclude` leaves those labelled texts out (see `build_examples`)."""
    examples = build_examples(Path(shared_dir), exclude)
    classes = [NONE, *CATEGORIES.names()]
    rng = random.Random(SEED)
    held = [rng.random() < HELD_OUT for _ in examples]
    grams = [features(e.text) for e in examples]
    train_ids = [i for i, h in enumerate(held) if not h]
    vocabulary = _vocabulary([grams[i] for i in train_ids])
    rows = [[vocabulary[g] for g in gs if g in vocabulary] for gs in grams]
    labels = np.array([classes.index(e.label) for e in examples])
    weights, bias = _fit([rows[i] for i in train_ids], labels[train_ids], len(vocabulary), len(classes))
    model = NgramClassifier(vocabulary, weights.astype(np.float16).astype(np.float32), bias, classes, 1.0)
    held_ids = [i for i, h in enumerate(held) if h]
    scored = [(model.predict(examples[i].text), examples[i].label) for i in held_ids]
    negatives = [score for (score, _), label in scored if label == NONE]
    # The guard scores only reports (speech.speech_act), so the threshold is set on the negatives that reach it.
    reaches = {i: speech.speech_act(examples[i].text) is speech.Act.REPORT for i in held_ids}
    cuts: dict[str, float] = {}
    for kind, share in TARGET_FALSE_ALARM.items():
        kind_scores = sorted(
            (
                s
                for ((s, _), label), i in zip(scored, held_ids, strict=True)
                if label == NONE and POOL[examples[i].kind] == kind and reaches[i]
            ),
            reverse=True,
        )
        if kind_scores:
            cuts[kind] = float(kind_scores[int(len(kind_scores) * share)])
    model.threshold = round(max(cuts.values(), default=0.5) + 1e-4, 4)
    positives = [(score, category, label) for (score, category), label in scored if label != NONE]
    caught = [p for p in positives if p[0] >= model.threshold]
    report = {
        "examples": float(len(examples)),
        "held_out_positives": float(len(positives)),
        "held_out_negatives": float(len(negatives)),
        "threshold": model.threshold,
        **{f"cut_{kind}": round(cut, 4) for kind, cut in cuts.items()},
        "held_out_recall": len(caught) / max(len(positives), 1),
        "held_out_category_accuracy": sum(c == lab for _, c, lab in caught) / max(len(caught), 1),
        "held_out_false_alarm": sum(s >= model.threshold for s in negatives) / max(len(negatives), 1),
        "vocabulary": float(len(vocabulary)),
    }
    return model, report


def main() -> None:
    """Command line: train and write the weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shared", default="../shared", help="the shared folder with data/ (bundled corpora)"
    )
    parser.add_argument("--out", default="src/wenzhen/resources/safety/classifier.npz")
    args = parser.parse_args()
    model, report = train(args.shared)
    model.save(args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
