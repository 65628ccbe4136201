"""The task zoo: a small pretrained Llama, experts fine-tuned from it, calibration data, an evaluator.

Python API::

    from mergekit_from.taskzoo import build_zoo, load_manifest, evaluate
    zoo = build_zoo(quick=False)          # or load_manifest(dir); cached after the first build
    zoo.base, zoo.expert("reverse"), zoo.expert("reverse", "lora"), zoo.calibration("reverse")
    evaluate(merged_dir, zoo.targets, n=200, tokenizer_dir=zoo.base)   # {task: exact-match}
"""

from mergekit_from.taskzoo.build import FULL, QUICK, ZooSpec, build_zoo, default_zoo_dir
from mergekit_from.taskzoo.evaluate import evaluate, load_model
from mergekit_from.taskzoo.manifest import Zoo, load_manifest
from mergekit_from.taskzoo.tasks import TARGET_TASKS, TASKS, examples

__all__ = ["FULL", "QUICK", "TARGET_TASKS", "TASKS", "Zoo", "ZooSpec", "build_zoo", "default_zoo_dir",
           "evaluate", "examples", "load_manifest", "load_model"]
