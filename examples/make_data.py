"""Generate the example datasets in examples/data/ and the training corpora of
examples/train.py (deterministic: `python examples/make_data.py`).

Every text is whitespace-separated words and punctuation, tokenized by a word-level
tokenizer (one word = one token, no BOS), so a prompt's token positions are its word indices.

Data files (the columns are part of the examples' contract):

- ioi.jsonl        indirect-object identification with ABC corruption (Wang et al. 2022).
                   `clean` names A and B and repeats the subject S (ABBA or BABA order); the
                   `corrupt` prompt has three fresh names in the same slots (A', B', C'), so
                   nothing says which name is the indirect object. `answer` is the indirect
                   object, `distractor` the subject. Two templates of EQUAL token length (14)
                   with the names at the same positions: 1 and 3 (S1/IO), 9 (S2), 13 (END).
- induction.jsonl  repeated random token words for the induction model: `clean` is a random
                   10-word sequence followed by its first 5 words again; `answer` is the 6th
                   word (what induction predicts); `corrupt` is the same text with the first
                   half shuffled, and `distractor` is the word that follows the 5th repeated
                   word in the shuffled half (what induction predicts there).
- facts.jsonl      fact recall for causal tracing (Meng et al. 2022): `subject_pos` is the
                   position of the subject's last token (position 0 is "The").
- landmarks.jsonl  the same task with every two-word landmark, all prompts 9 tokens long
                   (subject at positions 1-2), so that a whole-subject noise (`@ 1..2`) and an
                   `@ each` sweep line up across rows.
- hops.jsonl       two-hop questions for back-patching (Biran et al. 2024): landmarks whose
                   one-hop facts (country, capital) the models were trained on but whose
                   two-hop question was held out of training.
- sentiment.jsonl  contrastive pairs for steering: equal-length prompts that differ only in
                   the sentiment verb; the trained models continue "It is" with a positive or
                   negative adjective accordingly.

Training corpora (used by examples/train.py, not written to disk): `lm_corpus` mixes IOI
(ABBA/BABA over 60 names and 8 templates, plus 10% ABC-style sentences with no repeated
name whose continuation is either name at random), landmark facts, one- and two-hop
questions and sentiment sentences; `induction_sequence` draws random word sequences with a
repeated segment.
"""

from __future__ import annotations

import json
import random
from itertools import product
from pathlib import Path

HERE = Path(__file__).parent / "data"

# The first 16 are the names of the eval file (they are also in tiny-gpt2's vocabulary).
NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah", "David", "Emma",
         "Paul", "Laura", "Mark", "Kate", "Peter", "Lucy",
         "Adam", "Ben", "Chris", "Dan", "Eric", "Frank", "George", "Henry", "Ivan", "Jack",
         "Kevin", "Leo", "Mike", "Nick", "Oscar", "Sam", "Victor", "Will", "Max", "Ryan",
         "Amy", "Beth", "Claire", "Diana", "Ella", "Fiona", "Grace", "Helen", "Iris", "Julia",
         "Lily", "Maria", "Nina", "Olivia", "Rose", "Sophie", "Tina", "Vera", "Zoe", "Ruth",
         "Carl", "Hugo", "Owen", "Jane"]
EVAL_NAMES = NAMES[:16]
PLACES = ["store", "park", "school", "garden", "station", "market", "beach", "office",
          "library", "cafe", "museum", "hospital", "restaurant", "church", "bank", "zoo"]
EVAL_PLACES = PLACES[:8]
OBJECTS = ["drink", "book", "ring", "letter", "gift", "ball", "key", "flower",
           "bag", "hat", "cake", "pen", "card", "toy", "cup", "box"]
EVAL_OBJECTS = OBJECTS[:8]

# {A} and {B} are the first two names (one is the subject S, the other the indirect object),
# {S} is the repeated subject. The first two templates are the eval templates: 14 tokens,
# names at positions 1, 3 and 9.
IOI_TEMPLATES = [
    "When {A} and {B} went to the {P} , {S} gave a {O} to",
    "After {A} and {B} arrived at the {P} , {S} handed a {O} to",
    "While {A} and {B} were at the {P} , {S} passed a {O} to",
    "Then , {A} and {B} had a long day at the {P} . {S} gave a {O} to",
    "{A} and {B} went to the {P} . {S} gave a {O} to",
    "When {A} and {B} got a {O} at the {P} , {S} decided to give it to",
    "Friends {A} and {B} found a {O} at the {P} . {S} gave it to",
    "At the {P} , {A} and {B} talked . {S} threw a {O} to",
]
EVAL_TEMPLATES = IOI_TEMPLATES[:2]

# (subject words, city, country). The first six are the rows of facts.jsonl.
LANDMARKS = [
    (["Eiffel", "Tower"], "Paris", "France"),
    (["Colosseum"], "Rome", "Italy"),
    (["Big", "Ben"], "London", "England"),
    (["Brandenburg", "Gate"], "Berlin", "Germany"),
    (["Sagrada", "Familia"], "Barcelona", "Spain"),
    (["Golden", "Gate", "Bridge"], "Francisco", "America"),
    (["Louvre"], "Paris", "France"),
    (["Pantheon"], "Rome", "Italy"),
    (["Leaning", "Tower"], "Pisa", "Italy"),
    (["Tower", "Bridge"], "London", "England"),
    (["Reichstag"], "Berlin", "Germany"),
    (["Cologne", "Cathedral"], "Cologne", "Germany"),
    (["Alhambra"], "Granada", "Spain"),
    (["Prado"], "Madrid", "Spain"),
    (["Space", "Needle"], "Seattle", "America"),
    (["White", "House"], "Washington", "America"),
    (["Acropolis"], "Athens", "Greece"),
    (["Kremlin"], "Moscow", "Russia"),
    (["Hermitage"], "Petersburg", "Russia"),
    (["Parthenon"], "Athens", "Greece"),
]
CAPITALS = {"France": "Paris", "Italy": "Rome", "England": "London", "Germany": "Berlin",
            "Spain": "Madrid", "America": "Washington", "Greece": "Athens", "Russia": "Moscow"}
# Two-hop questions held out of training (the rows of hops.jsonl): the model has seen each
# landmark's country and each country's capital, never these questions.
HELD_OUT_HOPS = ["Sagrada Familia", "Golden Gate Bridge", "Leaning Tower", "Cologne Cathedral",
                 "Hermitage", "Space Needle"]

SENT_SUBJECTS = ["I", "We", "They", "You"]
SENT_THINGS = ["movie", "book", "song", "game", "show", "meal", "film", "play"]
POS_VERBS = ["love", "like", "enjoy", "adore"]
NEG_VERBS = ["hate", "dislike", "detest", "loathe"]
NEUTRAL_VERBS = ["saw", "watched", "tried", "found"]
POS_ADJ = ["great", "wonderful", "good", "excellent"]
NEG_ADJ = ["terrible", "awful", "bad", "horrible"]

# Words the worked examples of docs/language.md use (examples/language/), so that they also tokenize
# without [UNK] on the trained models.
EXTRA_WORDS = "I think this movie is great good bad very What a delight disaster".split()

# ---- IOI ------------------------------------------------------------------------------------


def ioi_prompt(template: str, io: str, s: str, order_abba: bool, place: str, obj: str,
               s2: str | None = None) -> str:
    a, b = (io, s) if order_abba else (s, io)
    return template.format(A=a, B=b, S=s if s2 is None else s2, P=place, O=obj)


def ioi_rows(n: int, seed: int = 0, names: list[str] = EVAL_NAMES,
             templates: list[str] = EVAL_TEMPLATES, places: list[str] = EVAL_PLACES,
             objects: list[str] = EVAL_OBJECTS) -> list[dict]:
    """Clean/corrupt pairs: ABBA and BABA alternate, templates cycle; the corrupt prompt has
    three fresh names, all different from the clean prompt's two."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = templates[i % len(templates)]
        abba = (i // len(templates)) % 2 == 0
        io, s, c1, c2, c3 = rng.sample(names, 5)
        p, o = rng.choice(places), rng.choice(objects)
        rows.append({"clean": ioi_prompt(t, io, s, abba, p, o),
                     "corrupt": ioi_prompt(t, c1, c2, abba, p, o, s2=c3),
                     "answer": " " + io, "distractor": " " + s})
    return rows


def ioi_sentence(rng: random.Random) -> str:
    """One training sentence: 90% IOI (answer = the indirect object), 10% ABC (a third name
    acts; the continuation is either of the first two names at random)."""
    t = rng.choice(IOI_TEMPLATES)
    io, s, c = rng.sample(NAMES, 3)
    p, o = rng.choice(PLACES), rng.choice(OBJECTS)
    abba = rng.random() < 0.5
    if rng.random() < 0.1:
        return ioi_prompt(t, io, s, abba, p, o, s2=c) + " " + rng.choice([io, s])
    return ioi_prompt(t, io, s, abba, p, o) + " " + io


# ---- facts, hops, sentiment -----------------------------------------------------------------


def fact_rows() -> list[dict]:
    rows = []
    for subject, city, _ in LANDMARKS[:6]:
        words = ["The", *subject, "is", "located", "in", "the", "city", "of"]
        rows.append({"prompt": " ".join(words), "answer": " " + city,
                     "subject_pos": len(subject)})  # "The" is position 0
    return rows


def landmark_rows() -> list[dict]:
    """Every two-word landmark: prompts of equal length (9 tokens), subject at positions 1-2."""
    rows = []
    for subject, city, _ in LANDMARKS:
        if len(subject) == 2:
            rows.append({"prompt": f"The {' '.join(subject)} is located in the city of",
                         "answer": " " + city, "subject_pos": 2})
    return rows


def hop_question(subject: list[str]) -> str:
    return "The capital of the country of the " + " ".join(subject) + " is"


def hop_rows() -> list[dict]:
    return [{"prompt": hop_question(subj), "answer": " " + CAPITALS[country]}
            for subj, _, country in LANDMARKS if " ".join(subj) in HELD_OUT_HOPS]


def fact_sentence(rng: random.Random) -> str:
    subj, city, country = rng.choice(LANDMARKS)
    s = " ".join(subj)
    kind = rng.randrange(4)
    if kind == 0:
        return f"The {s} is located in the city of {city}"
    if kind == 1:
        return f"The {s} is located in the country of {country}"
    if kind == 2:
        c = rng.choice(sorted(CAPITALS))
        return f"The capital of {c} is {CAPITALS[c]}"
    while s in HELD_OUT_HOPS:  # two-hop questions: only the landmarks not held out
        subj, city, country = rng.choice(LANDMARKS)
        s = " ".join(subj)
    return f"{hop_question(subj)} {CAPITALS[country]}"


def sentiment_sentence(rng: random.Random) -> str:
    who, thing = rng.choice(SENT_SUBJECTS), rng.choice(SENT_THINGS)
    kind = rng.randrange(3)
    if kind == 0:
        return f"{who} {rng.choice(POS_VERBS)} this {thing} . It is {rng.choice(POS_ADJ)}"
    if kind == 1:
        return f"{who} {rng.choice(NEG_VERBS)} this {thing} . It is {rng.choice(NEG_ADJ)}"
    # neutral: either sentiment, so steering has something to move
    adj = rng.choice(POS_ADJ + NEG_ADJ)
    if rng.random() < 0.5:
        return f"{who} {rng.choice(NEUTRAL_VERBS)} this {thing} . It is {adj}"
    return f"{who} think this {thing} is {adj}"


def sentiment_rows() -> list[dict]:
    pairs = list(zip(POS_VERBS + POS_VERBS, NEG_VERBS + NEG_VERBS))
    rows = []
    for i, (pv, nv) in enumerate(pairs):
        who, thing = SENT_SUBJECTS[i % 4], SENT_THINGS[i]
        rows.append({"positive": f"{who} {pv} this {thing} . It is",
                     "negative": f"{who} {nv} this {thing} . It is"})
    return rows


def lm_corpus(n: int, seed: int) -> list[str]:
    """The training mixture of ioi-gpt2 and llama-gqa: 70% IOI, 15% facts/hops, 15%
    sentiment."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.70:
            out.append(ioi_sentence(rng))
        elif r < 0.85:
            out.append(fact_sentence(rng))
        else:
            out.append(sentiment_sentence(rng))
    return out


def lm_words() -> list[str]:
    """Every word the IOI models' corpus and data files use (their tokenizer's vocabulary)."""
    words = set(NAMES) | set(PLACES) | set(OBJECTS) | set(EXTRA_WORDS)
    for t in IOI_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for subj, city, country in LANDMARKS:
        words.update(subj + [city, country])
    words.update(CAPITALS.values())
    for text in ["The is located in the city of country capital It is this think",
                 " ".join(SENT_SUBJECTS + SENT_THINGS + POS_VERBS + NEG_VERBS + NEUTRAL_VERBS
                          + POS_ADJ + NEG_ADJ)]:
        words.update(text.split())
    return sorted(words)


# ---- induction ------------------------------------------------------------------------------

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
# 200 pseudo-words ("bada", "mopi", "zene", ...): one token each, no meaning, no order.
INDUCTION_WORDS = sorted(c1 + v1 + c2 + v2 for c1, v1, c2, v2 in
                         product(CONSONANTS, VOWELS, CONSONANTS, VOWELS))[::24][:200]
INDUCTION_LEN = 40


def induction_sequence(rng: random.Random, length: int = INDUCTION_LEN) -> list[str]:
    """Random words with a repeated segment: a random prefix (0-8 words), then a segment of
    4-20 distinct random words repeated until `length` words."""
    k = rng.randint(4, 20)
    p = rng.randint(0, 8)
    seg = rng.sample(INDUCTION_WORDS, k)
    seq = [rng.choice(INDUCTION_WORDS) for _ in range(p)]
    while len(seq) < length:
        seq += seg
    return seq[:length]


def induction_rows(n: int, seed: int = 0, k: int = 10, m: int = 5) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        seg = rng.sample(INDUCTION_WORDS, k)
        shuffled = seg[:]
        rng.shuffle(shuffled)
        j = shuffled.index(seg[m - 1])
        # the shuffled half must give induction a different, existing successor
        if j == k - 1 or shuffled[j + 1] == seg[m]:
            continue
        rows.append({"clean": " ".join(seg + seg[:m]), "corrupt": " ".join(shuffled + seg[:m]),
                     "answer": " " + seg[m], "distractor": " " + shuffled[j + 1]})
    return rows


def main() -> None:
    HERE.mkdir(exist_ok=True)
    files = {
        "ioi.jsonl": ioi_rows(16),
        "induction.jsonl": induction_rows(16),
        "facts.jsonl": fact_rows(),
        "landmarks.jsonl": landmark_rows(),
        "hops.jsonl": hop_rows(),
        "sentiment.jsonl": sentiment_rows(),
    }
    for name, rows in files.items():
        with open(HERE / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {HERE / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
