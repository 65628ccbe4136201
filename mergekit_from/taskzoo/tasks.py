"""Seeded sequence tasks: (prompt, response) pairs over a small letter alphabet.

Every task maps an input string of 4-7 letters from ``ALPHABET`` to a response. A prompt is
``"<task>:<input>="``. The base model is pretrained (``stream(..., replay=1.0)``) on a mixture that
gives it every skill but not the tasks:

* **code words**: every transform under its own fixed random word (``CODES``), so the base holds each
  skill and a way to select it by a tag;
* **shadow names**: each task's *name* bound to a different transform (:func:`shadows`), so a named prompt
  gets a fluent, wrong answer, and the names have distinct representations as in a real base;
* **decoys**: random words with a random transform, so an unknown tag means "no particular skill".

A fine-tune ties its task's name to its transform: it only re-binds a tag the base already reads to a
skill the base already has (elicitation, not learning), which is what keeps task vectors small and
experts mergeable. It replays the pretraining mixture (``replay``; minus its own shadow binding), the
way real fine-tunes keep the base's other behaviour. An earlier design with decoys only left every
unknown name with nearly the same representation, so experts interfered more (docs/taskzoo.md).

Splits are decided by the input string itself (a CRC32 bucket), so train, calibration and test
never share an input, for any task, whatever the seed. Sampling within a split is seeded by
``(seed, task, split)`` and therefore deterministic across runs and machines.

Calibration JSONL (what RegMean / FW-Merging read): one JSON object per line,
``{"prompt": "reverse:abcd=", "response": "dcba"}``. The model sees
``<s> + prompt + response + </s>``; data-informed methods feed ``<s> + prompt + response``.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

ALPHABET = "abcdefghij"
MIN_LEN, MAX_LEN = 4, 7
TAG_LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "calibration", "test")
Split = Literal["train", "calibration", "test"]


def _shift(s: str, by: int) -> str:
    n = len(ALPHABET)
    return "".join(ALPHABET[(ALPHABET.index(c) + by) % n] for c in s)


def _swap_pairs(s: str) -> str:
    chars = list(s)
    for i in range(0, len(chars) - 1, 2):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    fn: Callable[[str], str]

    def prompt(self, x: str, tag: str | None = None) -> str:
        return f"{tag or self.name}:{x}="


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        # the eight target tasks come first
        Task("reverse", "reverse the string", lambda s: s[::-1]),
        Task("sort", "sort the letters", lambda s: "".join(sorted(s))),
        Task("shift", "caesar shift every letter by +3 (mod the alphabet)", lambda s: _shift(s, 3)),
        Task("rotate", "rotate left by two positions", lambda s: s[2:] + s[:2]),
        Task("double", "write every letter twice", lambda s: "".join(c + c for c in s)),
        Task("evens", "keep the letters at even positions", lambda s: s[::2]),
        Task("swap", "swap adjacent pairs", _swap_pairs),
        Task("dedupe", "drop repeated letters, keep first occurrences", lambda s: "".join(dict.fromkeys(s))),
        # the rest: irrelevant experts for pools built by later issues
        Task("rotr", "rotate right by one position", lambda s: s[-1] + s[:-1]),
        Task("odds", "keep the letters at odd positions", lambda s: s[1::2]),
        Task("unshift", "caesar shift every letter by -2", lambda s: _shift(s, -2)),
        Task("mirror", "the string followed by its reverse", lambda s: s + s[::-1]),
        Task("ends", "first and last letter", lambda s: s[0] + s[-1]),
        Task("maxchar", "the largest letter", lambda s: max(s)),
        Task("rsort", "sort the letters in descending order", lambda s: "".join(sorted(s, reverse=True))),
        Task("distinct", "number of distinct letters", lambda s: str(len(set(s)))),
        Task("tail", "drop the first letter", lambda s: s[1:]),
        Task("init", "drop the last letter", lambda s: s[:-1]),
        Task("length", "number of letters", lambda s: str(len(s))),
        Task("minchar", "the smallest letter", lambda s: min(s)),
    )
}
TARGET_TASKS: tuple[str, ...] = tuple(TASKS)[:8]
# Pretraining mixture: shares of code-word, shadow-name and decoy examples.
MIXTURE = {"code": 0.4, "shadow": 0.3, "decoy": 0.3}


def _code_words() -> dict[str, str]:
    rng = random.Random("taskzoo:codes")
    codes: dict[str, str] = {}
    for name in TASKS:
        while (word := "".join(rng.choice(TAG_LETTERS) for _ in range(rng.randint(3, 6)))) in {*TASKS, *codes.values()}:
            pass
        codes[name] = word
    return codes


CODES = _code_words()


def shadows(universe: list[str]) -> dict[str, str]:
    """Each name's pretraining binding: the task a few places on in ``universe`` (no fixed points)."""
    n = len(universe)
    step = 5 if n > 5 and n % 5 else 1
    return {name: universe[(i + step) % n] for i, name in enumerate(universe)}


def split_of(x: str) -> Split:
    """The split an input belongs to: 10% test, 10% calibration, 80% train."""
    bucket = zlib.crc32(x.encode()) % 20
    return "test" if bucket < 2 else "calibration" if bucket < 4 else "train"


def _inputs(rng: random.Random, split: Split) -> Iterator[str]:
    while True:
        x = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))
        if split_of(x) == split:
            yield x


def examples(task: str, split: Split, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, response) pairs of ``task`` from ``split``, deterministic in ``seed``."""
    t = get_task(task)
    rng = random.Random(f"{seed}:{task}:{split}")
    seen: dict[str, None] = {}
    for x in _inputs(rng, split):
        seen.setdefault(x)
        if len(seen) == n:
            break
    return [(t.prompt(x), t.fn(x)) for x in seen]


def decoy_tag(rng: random.Random) -> str:
    """A random 3-8 letter word that is neither a task's name nor a code word."""
    while True:
        tag = "".join(rng.choice(TAG_LETTERS) for _ in range(rng.randint(3, 8)))
        if tag not in TASKS and tag not in CODES.values():
            return tag


def stream(
    tasks: list[str], split: Split, seed: int, replay: float = 0.0, universe: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    """An endless seeded stream of training examples.

    With probability ``1 - replay`` an example of one of ``tasks`` under its name; otherwise an
    example of the pretraining mixture over ``universe`` (default: every task; pretraining uses
    ``replay=1``), leaving out the shadow bindings of ``tasks`` themselves.
    """
    universe = list(universe or TASKS)
    shadow = shadows(universe)
    renamable = [n for n in universe if n not in tasks]
    kinds, weights = list(MIXTURE), list(MIXTURE.values())
    rng = random.Random(f"{seed}:stream:{','.join(tasks)}:{','.join(universe)}:{split}:{replay}")
    inputs = _inputs(rng, split)
    while True:
        x = next(inputs)
        if rng.random() < replay:
            kind = rng.choices(kinds, weights)[0]
            if kind == "shadow" and renamable:
                name = rng.choice(renamable)
                yield TASKS[name].prompt(x), TASKS[shadow[name]].fn(x)
            else:
                t = TASKS[rng.choice(universe)]
                yield t.prompt(x, CODES[t.name] if kind == "code" else decoy_tag(rng)), t.fn(x)
        else:
            t = TASKS[rng.choice(tasks)]
            yield t.prompt(x), t.fn(x)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        from mergekit_from.errors import ConfigError

        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p, r in pairs:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
