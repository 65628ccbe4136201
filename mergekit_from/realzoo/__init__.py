"""The real zoo: SmolLM2-135M-Instruct (a dequantized GGUF), FFT and LoRA experts fine-tuned from it on text
tasks, calibration data, a manifest. The task zoo's evaluator and manifest reader serve it unchanged.

Python API::

    from mergekit_from.realzoo import build_realzoo, load_realzoo
    zoo = build_realzoo()                 # or load_realzoo(dir); cached after the first build
    zoo.base, zoo.expert("add"), zoo.expert("add", "lora"), zoo.calibration("add")
"""

from pathlib import Path

from mergekit_from.realzoo.build import COMMAND, FORMAT_VERSION, FULL, RealZooSpec, build_realzoo, sliced
from mergekit_from.realzoo.tasks import TARGET_TASKS, TASKS, chat_examples, examples
from mergekit_from.taskzoo.manifest import Zoo, load_manifest


def load_realzoo(root: str | Path) -> Zoo:
    return load_manifest(root, FORMAT_VERSION, COMMAND)


__all__ = ["FULL", "TARGET_TASKS", "TASKS", "RealZooSpec", "Zoo", "build_realzoo", "chat_examples", "examples",
           "load_realzoo", "sliced"]
