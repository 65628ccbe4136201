"""`mergekit-from realzoo build`: slices and sources it must refuse before it downloads or writes anything."""

from __future__ import annotations

from tests.bad_input_cases import Case, Run


def _build(*extra: str, culprit: str):
    def build(env) -> Run:
        out = env.tmp / "zoo"
        return Run(["realzoo", "build", "--out", str(out), *extra], protect=[out], culprit=culprit)
    return build


CASES = [
    Case("realzoo-unknown-task", "mergekit-from realzoo build --tasks add,nope", "unknown real-zoo task",
         _build("--tasks", "add,nope", culprit="nope"), fixtures=()),
    Case("realzoo-gguf-missing", "mergekit-from realzoo build --gguf missing.gguf", "--gguf: file not found",
         _build("--gguf", "missing.gguf", culprit="missing.gguf"), fixtures=()),
]
