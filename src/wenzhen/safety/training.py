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
# At most this share of held-out "none" texts may fire, per kind: hard negatives (labelled and generated)
# and real consultation questions (background), whose fire rate must stay low in service.
TARGET_FALSE_ALARM = {"labelled": 0.01, "generated": 0.01, "background": 0.005}


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
    for complaint in MILD:
        for _ in range(12):
            text = f"{rng.choice(WHO)}{rng.choice(WHEN)}{complaint}，{rng.choice(ASK)}"
            examples.append(Example(_prepared(text), NONE, "generated"))
    return examples


def background(shared_dir: Path, rules_fire: Callable[[str], bool]) -> list[Example]:
    """Real consultation questions (train split) as "none", without those the rules fire on."""
    texts = [t for t in consultation_questions(shared_dir, "train") if not rules_fire(t)]
    examples = [Example(_prepared(t), NONE, "background") for t in texts]
    # Single clauses too, so that short everyday messages ("周末太短了") read as "none".
    rng = random.Random(SEED)
    clauses = [c for t in rng.sample(texts, min(len(texts), 3000)) for c in rng.sample(_clauses(t), 1)]
    return examples + [Example(_prepared(c), NONE, "background") for c in clauses]


def build_examples(shared_dir: Path) -> list[Example]:
    """The whole training set, in a fixed order."""
    from wenzhen.safety.guard import Guard, SafetyConfig

    rules_only = Guard(SafetyConfig(classifier=False))
    rng = random.Random(SEED)
    red, ordinary = _read_labelled("red_flag.jsonl"), _read_labelled("ordinary.jsonl")
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


def train(shared_dir: str | Path) -> tuple[NgramClassifier, dict[str, float]]:
    """Train on the seeded 80% split, choose the threshold on the 20%, and report held-out figures."""
    examples = build_examples(Path(shared_dir))
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
    cuts = []
    for kind, share in TARGET_FALSE_ALARM.items():
        kind_scores = sorted(
            (
                s
                for ((s, _), label), i in zip(scored, held_ids, strict=True)
                if label == NONE and examples[i].kind == kind
            ),
            reverse=True,
        )
        if kind_scores:
            cuts.append(float(kind_scores[int(len(kind_scores) * share)]))
    model.threshold = round(max(cuts, default=0.5) + 1e-4, 4)
    positives = [(score, category, label) for (score, category), label in scored if label != NONE]
    caught = [p for p in positives if p[0] >= model.threshold]
    report = {
        "examples": float(len(examples)),
        "held_out_positives": float(len(positives)),
        "held_out_negatives": float(len(negatives)),
        "threshold": model.threshold,
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
