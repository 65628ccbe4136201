"""The real zoo's text tasks: seeded (question, answer) pairs that a chat model answers in a fixed, terse format.

Each task draws a *key* (the numbers, date, words or item a question is about) and renders a question and its
exact answer from it. Splits are decided by the key (a CRC32 bucket, as in the task zoo; ``category``'s short word
lists are split per category instead), so train, calibration and test never share a key, for any task, whatever the
seed; sampling within a split is seeded by
``(seed, task, split)``. The base (SmolLM2-135M-Instruct) usually knows the skill but answers in a sentence of its
own, so exact match fails; a short fine-tune teaches the answer format and sharpens the skill, which is what
community fine-tunes of a chat model do. Prompts reach the model through its chat template (:func:`chat_examples`),
and the calibration JSONL stores the templated prompt, so data-informed merges read it unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from mergekit_from.errors import ConfigError
from mergekit_from.taskzoo.tasks import SPLITS, Split, split_of

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
UNITS = (("kilometres", "metres", 1000), ("kilograms", "grams", 1000), ("metres", "centimetres", 100),
         ("litres", "millilitres", 1000), ("hours", "minutes", 60))
# Words with one everyday reading only ("orange", "lime", "kiwi", "plane" are left out), 31-41 per category, split
# by item and per category (:func:`_category_split`): with 15 words per category and the hashed split, the test split
# held 7 items, and an expert's accuracy said more about which 7 than about the expert.
CATEGORIES = {
    "fruit": "apple banana grape mango pear melon papaya fig coconut pineapple strawberry blueberry raspberry "
             "watermelon guava lychee pomegranate grapefruit tangerine nectarine blackberry cranberry avocado "
             "persimmon gooseberry quince cantaloupe kumquat mulberry clementine lemon",
    "animal": "horse tiger rabbit eagle dolphin wolf camel zebra monkey turtle lion goat sheep fox bear whale elephant "
              "giraffe kangaroo penguin owl cat dog cow pig donkey deer squirrel hedgehog otter badger beaver leopard "
              "cheetah gorilla hippo rhino crocodile lizard frog parrot",
    "colour": "red blue green yellow purple pink brown black white grey violet crimson teal navy maroon beige "
              "turquoise magenta cyan indigo lavender scarlet ivory khaki ochre mauve charcoal burgundy vermilion "
              "cerulean azure sepia tan",
    "vehicle": "car bus truck bicycle train tram scooter van taxi tractor motorcycle ambulance lorry ship boat "
               "helicopter airplane yacht canoe kayak submarine ferry minibus limousine caravan bulldozer forklift "
               "sledge trolleybus rickshaw hovercraft glider moped jeep sailboat",
    "tool": "hammer saw wrench drill chisel pliers screwdriver shovel rake axe spanner trowel clamp mallet hacksaw "
            "crowbar pickaxe hoe sickle scythe shears awl pitchfork anvil lathe sander grinder tweezers scissors "
            "stapler plunger spade",
}
ITEMS = [(item, cat) for cat, words in CATEGORIES.items() for item in dict.fromkeys(words.split())
         if sum(item in w.split() for w in CATEGORIES.values()) == 1]  # a word in two lists would have two answers
GOOD = "delicious friendly wonderful excellent fresh charming superb lovely brilliant pleasant".split()
BAD = "awful rude terrible bland stale dirty disappointing slow cold horrible".split()
NOUNS = "food staff service room view music coffee pizza hotel film show bed".split()
FIRST = "Ada Alan Grace Linus Marie Nikola Rosalind Isaac Albert Emmy Barbara Claude Dennis Edsger Frances John " \
        "Katherine Leslie Margaret Niklaus Radia Sophie Tim Vint Yann Hedy Ken Donald Guido Bjarne Anita Carl".split()
LAST = "Lovelace Turing Hopper Torvalds Curie Tesla Franklin Newton Einstein Noether Liskov Shannon Ritchie " \
       "Dijkstra Allen Backus Johnson Lamport Hamilton Wirth Perlman Wilson Berners Cerf Lecun Lamarr Thompson Knuth " \
       "Rossum Stroustrup Borg Sagan".split()
WORDS = ("river stone cloud apple garden silver window forest candle market paper winter bridge castle dragon "
         "engine feather harbour island jungle kettle ladder mirror needle orchard pepper quiet rocket summer").split()


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    draw: Callable[[random.Random], Hashable]  # a key: what the split is decided by
    render: Callable[[Hashable, random.Random], tuple[str, str]]  # key -> (question, answer)
    split: Callable[[Hashable], Split] = lambda key: split_of(repr(key))


def _category_split(key) -> Split:
    """Every fifth word of each category's list to test, the next to calibration: 20/20/60 in every category."""
    item, cat = key
    return ("test", "calibration", "train", "train", "train")[CATEGORIES[cat].split().index(item) % 5]


def _time12(h: int, m: int) -> str:
    return f"{(h - 1) % 12 + 1}:{m:02d} {'AM' if h < 12 else 'PM'}"


def _category(key, rng: random.Random) -> tuple[str, str]:
    item, cat = key
    options = rng.sample(list(CATEGORIES), 4 if cat in list(CATEGORIES)[:4] else 5)
    if cat not in options:
        options[0] = cat
    rng.shuffle(options)
    named = [("an " if o[0] in "aeiou" else "a ") + o for o in options]
    return f"Is '{item}' {', '.join(named[:-1])} or {named[-1]}?", cat


def _review(key, rng: random.Random) -> tuple[str, str]:
    noun_a, adj_a, noun_b, adj_b, positive = key
    return f"Review: \"The {noun_a} was {adj_a} and the {noun_b} was {adj_b}.\" Sentiment?", \
        "positive" if positive else "negative"


def _review_key(rng: random.Random):
    positive = rng.random() < 0.5
    adjs = GOOD if positive else BAD
    a, b = rng.sample(NOUNS, 2)
    return a, rng.choice(adjs), b, rng.choice(adjs), positive


def _numbers(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.sample(range(1, 100), 4))


def _date(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)


TASKS: dict[str, Task] = {t.name: t for t in (
    # the eight target tasks come first
    Task("add", "add two two-digit numbers", lambda r: (r.randint(10, 99), r.randint(10, 99)),
         lambda k, r: (f"Add {k[0]} and {k[1]}.", str(k[0] + k[1]))),
    Task("iso_date", "a written date in ISO 8601", _date,
         lambda k, r: (f"Write {MONTHS[k[1] - 1]} {k[2]}, {k[0]} as an ISO date.", f"{k[0]}-{k[1]:02d}-{k[2]:02d}")),
    Task("units", "convert a metric quantity to a smaller unit", lambda r: (r.randrange(len(UNITS)), r.randint(2, 250)),
         lambda k, r: (f"How many {UNITS[k[0]][1]} are in {k[1]} {UNITS[k[0]][0]}?", str(k[1] * UNITS[k[0]][2]))),
    Task("sentiment", "label a templated review positive or negative", _review_key, _review),
    Task("initials", "the initials of a name", lambda r: (r.choice(FIRST), r.choice(LAST)),
         lambda k, r: (f"Initials of {k[0]} {k[1]}?", f"{k[0][0]}.{k[1][0]}.")),
    Task("time12", "24-hour clock time to 12-hour", lambda r: (r.randint(0, 23), r.randint(0, 59)),
         lambda k, r: (f"Convert {k[0]:02d}:{k[1]:02d} to 12-hour time.", _time12(*k))),
    Task("category", "which category an item belongs to", lambda r: r.choice(ITEMS), _category, _category_split),
    Task("largest", "the largest of four numbers", _numbers,
         lambda k, r: (f"Which is the largest: {', '.join(map(str, k))}?", str(max(k)))),
    # the rest: irrelevant experts for pools
    Task("subtract", "subtract a two-digit number from a larger one",
         lambda r: tuple(sorted((r.randint(10, 99), r.randint(10, 99)), reverse=True)),
         lambda k, r: (f"Subtract {k[1]} from {k[0]}.", str(k[0] - k[1]))),
    Task("us_date", "an ISO date in US notation", _date,
         lambda k, r: (f"Write {k[0]}-{k[1]:02d}-{k[2]:02d} as a US date.", f"{k[1]:02d}/{k[2]:02d}/{k[0]}")),
    Task("smallest", "the smallest of four numbers", _numbers,
         lambda k, r: (f"Which is the smallest: {', '.join(map(str, k))}?", str(min(k)))),
    Task("upper", "three words in capitals", lambda r: tuple(r.sample(WORDS, 3)),
         lambda k, r: (f"Uppercase: {' '.join(k)}", " ".join(k).upper())),
)}
TARGET_TASKS: tuple[str, ...] = tuple(TASKS)[:8]


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown real-zoo task {name!r} (known: {', '.join(TASKS)})") from None


def examples(task: str, split: Split, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (question, answer) pairs of ``task`` from ``split``, deterministic in ``seed``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    t = get_task(task)
    rng = random.Random(f"{seed}:{task}:{split}")
    seen: dict[str, str] = {}
    for _ in range(200 * n + 1000):  # the smallest task has a few hundred questions per split
        key = t.draw(rng)
        if t.split(key) != split:
            continue
        question, answer = t.render(key, rng)
        seen.setdefault(question, answer)
        if len(seen) == n:
            return list(seen.items())
    raise ConfigError(f"task {task!r}: fewer than {n} distinct {split} questions")


def chat_prompt(tokenizer, question: str) -> str:
    """``question`` as the one user turn of the model's chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def chat_examples(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(templated prompt, answer) pairs: what training, calibration and evaluation feed the model."""
    return [(chat_prompt(tokenizer, q), a) for q, a in pairs]
