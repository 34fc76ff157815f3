"""Generate the example datasets in examples/data/ (deterministic: `python examples/make_data.py`).

- ioi.jsonl     indirect-object identification with ABC corruption (Wang et al. 2022): the
                clean prompt names A and B and repeats B; the corrupt prompt uses three
                different names, so the name-mover signal is gone. `answer` is the indirect
                object (A), `distractor` the repeated subject (B).
- facts.jsonl   fact recall for causal tracing (Meng et al. 2022): `subject_pos` is the
                position of the subject's last token (word-level tokenizer, no BOS).
- hops.jsonl    two-hop questions for back-patching (Biran et al. 2024).
- sentiment.jsonl  contrastive pairs for steering.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "data"

NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah", "David", "Emma",
         "Paul", "Laura", "Mark", "Kate", "Peter", "Lucy"]
PLACES = ["store", "park", "school", "garden", "station", "market", "beach", "office"]
OBJECTS = ["drink", "book", "ring", "letter", "gift", "ball", "key", "flower"]
TEMPLATES = [
    "When {A} and {B} went to the {P} , {B} gave a {O} to",
    "Then , {A} and {B} had a long day at the {P} . {B} gave a {O} to",
    "After {A} and {B} arrived at the {P} , {B} handed a {O} to",
]

FACTS = [  # (subject words, relation prompt, answer)
    (["Eiffel", "Tower"], "is located in the city of", "Paris"),
    (["Colosseum"], "is located in the city of", "Rome"),
    (["Big", "Ben"], "is located in the city of", "London"),
    (["Brandenburg", "Gate"], "is located in the city of", "Berlin"),
    (["Sagrada", "Familia"], "is located in the city of", "Barcelona"),
    (["Golden", "Gate", "Bridge"], "is located in the city of", "Francisco"),
]

HOPS = [  # two-hop: the X of the Y of Z
    ("The capital of the country of the Eiffel Tower is", "Paris"),
    ("The capital of the country of the Colosseum is", "Rome"),
    ("The capital of the country of Big Ben is", "London"),
    ("The capital of the country of the Brandenburg Gate is", "Berlin"),
]

SENTIMENT = [
    ("I love this", "I hate this"),
    ("What a delight", "What a disaster"),
    ("This is wonderful", "This is terrible"),
    ("A great day", "A awful day"),
]


def ioi_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        a, b, c, d = rng.sample(NAMES, 4)
        p, o = rng.choice(PLACES), rng.choice(OBJECTS)
        clean = t.format(A=a, B=b, P=p, O=o)
        corrupt = t.replace("{B} gave", "{C} gave").replace("{B} handed", "{C} handed")
        corrupt = corrupt.format(A=c, B=d, C=rng.choice([x for x in NAMES if x not in (c, d)]),
                                 P=p, O=o)
        rows.append({"clean": clean, "corrupt": corrupt, "answer": " " + a,
                     "distractor": " " + b})
    return rows


def fact_rows() -> list[dict]:
    rows = []
    for subject, relation, answer in FACTS:
        words = ["The", *subject, *relation.split()]
        rows.append({"prompt": " ".join(words), "answer": " " + answer,
                     "subject_pos": len(subject)})  # "The" is position 0
    return rows


def main() -> None:
    HERE.mkdir(exist_ok=True)
    files = {
        "ioi.jsonl": ioi_rows(16),
        "facts.jsonl": fact_rows(),
        "hops.jsonl": [{"prompt": q, "answer": " " + a} for q, a in HOPS],
        "sentiment.jsonl": [{"positive": p, "negative": n} for p, n in SENTIMENT],
    }
    for name, rows in files.items():
        with open(HERE / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {HERE / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
