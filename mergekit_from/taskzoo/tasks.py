"""Seeded sequence tasks: (prompt, response) pairs over a small letter alphabet.

Every task maps an input string of 4-7 letters from ``ALPHABET`` to a response. A prompt is
``"<task>:<input>="``. The base model is pretrained on all transforms under *decoy* tags: random
words that name no task (``stream(..., replay=1.0)``), so it holds every skill, has learned that a
tag says nothing, and cannot tell which skill a named task wants. A fine-tune has to tie one name
to one skill; it replays decoy-tagged examples (``replay``) so that it learns exactly that rule
("this name -> this skill, any other tag -> as before") instead of "always do this skill", the
way real fine-tunes keep the base's other behaviour. That keeps experts mergeable.

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
    )
}
TARGET_TASKS: tuple[str, ...] = tuple(TASKS)[:8]


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
    """A random 3-8 letter word that is not the name of a task."""
    while True:
        tag = "".join(rng.choice(TAG_LETTERS) for _ in range(rng.randint(3, 8)))
        if tag not in TASKS:
            return tag


def stream(tasks: list[str], split: Split, seed: int, replay: float = 0.0) -> Iterator[tuple[str, str]]:
    """An endless seeded stream of training examples.

    With probability ``1 - replay`` an example of one of ``tasks`` under its name; otherwise an
    example of any task under a decoy tag (pretraining uses ``replay=1``).
    """
    rng = random.Random(f"{seed}:stream:{','.join(tasks)}:{split}:{replay}")
    inputs = _inputs(rng, split)
    everything = list(TASKS)
    while True:
        x = next(inputs)
        if rng.random() < replay:
            t = TASKS[rng.choice(everything)]
            yield t.prompt(x, decoy_tag(rng)), t.fn(x)
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


def read_jsonl(path: Path) -> list[tuple[str, str]]:
    """Read a calibration/test JSONL file; a malformed line names the file and line."""
    from mergekit_from.errors import ConfigError

    pairs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            pairs.append((str(obj["prompt"]), str(obj["response"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{i}: expected {{\"prompt\": ..., \"response\": ...}} ({exc})") from None
    return pairs
