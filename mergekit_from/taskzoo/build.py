"""Build the task zoo once and cache it: base models, experts, adapters, misfits, data, manifest.

Layout of a zoo folder (every model folder is a plain HF folder a Hub would serve unchanged)::

    manifest.json                  written last: its presence means the zoo is complete
    data/<task>/calibration.jsonl  {"prompt": ..., "response": ...} per line (see tasks.py)
    data/<task>/test.jsonl         the evaluator's test examples, for reference
    models/taskzoo/base/           the pretrained base (safetensors, config, tokenizer, README)
    models/taskzoo/fft-<task>/     a full fine-tune of base per task
    models/taskzoo/lora-<task>/    a PEFT LoRA adapter on base per target task
    models/taskzoo/base-b/, models/taskzoo/base-b-fft-<task>/   a second, independent base and an expert
    models/taskzoo/hidden-<n>/, models/taskzoo/vocab-wide/       never to be merged with base's family

``models/`` is laid out as a Hub is: the folder of repo ``taskzoo/<name>`` is ``models/taskzoo/<name>``,
so ``mergekit-from zoo serve DIR/models`` serves the zoo unchanged, under the ids the cards name.

Each model folder is built in a temporary sibling and renamed into place when complete, so an
interrupted build resumes with the models that finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from db.paths import cache_root
from mergekit_from.card import write_card
from mergekit_from.output import Output, replace_atomically
from mergekit_from.taskzoo.evaluate import accuracy, evaluate_loaded
from mergekit_from.taskzoo.manifest import FORMAT_VERSION, MANIFEST, Zoo, load_manifest, write_manifest
from mergekit_from.taskzoo.tasks import TARGET_TASKS, TASKS, examples, stream, write_jsonl
from mergekit_from.taskzoo.tokenizer import WIDE_CHARS, CharVocab
from mergekit_from.taskzoo.training import ModelShape, TrainSchedule, new_model, train

DATA = "data"
# What a zoo folder holds: its build, and the caches benchmarks/quality.py derives from it.
ZOO_ENTRIES = (DATA, "models", MANIFEST, MANIFEST + ".tmp")
REPO_PREFIX = "taskzoo"
MODELS = Path("models") / REPO_PREFIX  # repo id taskzoo/<name> lives in models/taskzoo/<name>
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines a zoo; the manifest records it and a rebuild must match it."""

    name: str
    tasks: tuple[str, ...]
    targets: tuple[str, ...]
    shape: ModelShape
    pretrain: TrainSchedule
    second_pretrain: TrainSchedule
    finetune: TrainSchedule
    lora: TrainSchedule
    misfit: TrainSchedule
    misfit_hidden: ModelShape
    lora_rank: int = 8
    replay: float = 0.5  # share of pretraining-mixture examples in fine-tuning batches
    longer_finetune: dict[str, int] = field(default_factory=dict)  # step caps for slow learners (FFT and LoRA)
    target_acc: float = 0.97
    probe_n: int = 64
    eval_n: int = 200
    n_calibration: int = 256
    n_test: int = 200
    seed: int = 0


FULL = ZooSpec(
    name="full",
    tasks=tuple(TASKS),
    targets=TARGET_TASKS,
    shape=ModelShape(160, 448, 4, 4),
    pretrain=TrainSchedule(steps=800, lr=3e-3, batch_size=128, warmup=100),
    second_pretrain=TrainSchedule(steps=300, lr=3e-3, batch_size=128, warmup=50),
    # Gentle: lr 1e-4 re-binds a name in 50-250 steps (dedupe, the hardest, ~900); the choice is in docs/taskzoo.md.
    finetune=TrainSchedule(steps=1500, lr=1e-4, batch_size=32, warmup=10, cosine=False),
    lora=TrainSchedule(steps=1500, lr=1e-3, batch_size=32, warmup=10, cosine=False),
    misfit=TrainSchedule(steps=150, lr=3e-3, batch_size=64, warmup=20),
    misfit_hidden=ModelShape(128, 384, 4, 4),
    target_acc=0.96,
    probe_n=200,  # a 64-example probe stopped an expert at 0.95 probe / 0.875 test
)

QUICK = ZooSpec(
    name="quick",
    tasks=("ends", "maxchar", "evens", "rotr"),
    targets=("ends", "maxchar"),
    shape=ModelShape(48, 128, 2, 2),
    pretrain=TrainSchedule(steps=250, lr=1e-2, batch_size=64, warmup=20),
    second_pretrain=TrainSchedule(steps=40, lr=1e-2, batch_size=64, warmup=10),
    finetune=TrainSchedule(steps=200, lr=3e-3, batch_size=32, warmup=5, cosine=False),
    lora=TrainSchedule(steps=120, lr=1e-2, batch_size=32, warmup=5, cosine=False),
    misfit=TrainSchedule(steps=20, lr=1e-2, batch_size=32, warmup=5),
    misfit_hidden=ModelShape(32, 64, 2, 2),
    lora_rank=4,
    replay=0.0,  # too few steps to learn a tag-conditional rule; the quick zoo only has to work
    target_acc=0.9,
    probe_n=32,
    eval_n=64,
    n_calibration=64,
    n_test=64,
)


def default_zoo_dir(quick: bool = False) -> Path:
    """``$MERGEKIT_FROM_TASKZOO`` or ``~/.cache/mergekit-from/taskzoo`` (``-quick`` for the quick zoo)."""
    env = os.environ.get("MERGEKIT_FROM_TASKZOO")
    root = Path(env) if env else cache_root() / "taskzoo"
    return root.with_name(root.name + "-quick") if quick else root


def _where(name: str) -> dict[str, str]:
    """A model's manifest path and the repo id it is served under."""
    return {"path": (MODELS / name).as_posix(), "repo_id": f"{REPO_PREFIX}/{name}"}


def _card(repo_id: str, *, base_model: str | None, tags: list[str], library: str, body: str) -> dict[str, Any]:
    """What :func:`write_card` writes for a zoo model."""
    return {"body": f"# {repo_id}\n\n{body.strip()}", "base_model": base_model, "library_name": library,
            "pipeline_tag": "text-generation", "license": "apache-2.0", "tags": ["mergekit-from-taskzoo", *tags]}


DATA_README = """# Task zoo data

`<task>/calibration.jsonl` and `<task>/test.jsonl` hold one JSON object per line:

    {"prompt": "reverse:abcd=", "response": "dcba"}

A model sees the token sequence `<s>` + prompt + response + `</s>` (one token per character; the
tokenizer in any model folder adds `<s>`). Calibration examples are for data-informed merge methods
(RegMean, FW-Merging): feed `<s>` + prompt + response and collect activations. The calibration,
test and training splits never share an input string, for any task. Test examples are what
`mergekit-from eval` scores (greedy decoding, exact match of the response followed by `</s>`).
"""


class ZooModels:
    """A zoo's model folders under ``root/models``, each reused while its training plan is unchanged."""

    def __init__(self, root: Path, models: Path, progress):
        self.root, self.models_dir, self.progress = root, models, progress
        self.models: dict[str, dict[str, Any]] = {}
        self.trainings: dict[str, dict[str, Any]] = {}

    def _save(self, name: str, model, tokenizer, card: dict[str, Any], entry: dict[str, Any]) -> None:
        entry["training"] = self.trainings[name]
        with replace_atomically(self.root / self.models_dir / name) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            write_card(tmp, **card)
            (tmp / "zoo_entry.json").write_text(json.dumps(entry, indent=1, allow_nan=False))
        self.models[name] = entry

    def _cached(self, name: str, training: dict[str, Any]) -> bool:
        """Reuse a finished model folder if it was trained from exactly this training plan (and base)."""
        training = json.loads(json.dumps(training, default=lambda o: asdict(o)))
        self.trainings[name] = training
        entry_file = self.root / self.models_dir / name / "zoo_entry.json"
        if entry_file.is_file():
            # entries written before probe-less runs logged null held a bare NaN, which is not JSON
            entry = json.loads(entry_file.read_text(), parse_constant=lambda _: None)
            if entry.get("training") == training:
                self.models[name] = entry
                self.progress.update(1)
                return True
        return False

    def _load(self, name: str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self.root / self.models_dir / name),
                                                    dtype=torch.float32).eval()

    def remove_stale(self) -> None:
        """Delete model folders this build did not produce (left over from one with other settings)."""
        for stale in sorted((self.root / self.models_dir).iterdir()):
            if stale.name not in self.models:
                shutil.rmtree(stale)


class _Builder(ZooModels):
    def __init__(self, root: Path, spec: ZooSpec, progress):
        super().__init__(root, MODELS, progress)
        self.spec = spec
        self.vocab = CharVocab()
        self.tokenizer = self.vocab.hf_tokenizer()

    def _acc(self, model, tokenizer, tasks) -> dict[str, float]:
        return evaluate_loaded(model, tokenizer, tasks, self.spec.eval_n, seed=self.spec.seed)

    def _training(self, **parts: Any) -> dict[str, Any]:
        return {"seed": self.spec.seed, "eval_n": self.spec.eval_n, **parts}

    def _probe(self, model, task: str):
        pairs = examples(task, "calibration", self.spec.probe_n, seed=self.spec.seed + 1)
        return lambda: accuracy(model, self.tokenizer, pairs)

    def pretrain(self, name: str, seed: int, schedule: TrainSchedule, note: str) -> None:
        if self._cached(name, self._training(shape=self.spec.shape, tasks=self.spec.tasks, schedule=schedule,
                                           model_seed=seed, chars=self.vocab.chars, tags="codes+shadows+decoys")):
            return
        spec = self.spec
        t0 = time.perf_counter()
        model = new_model(spec.shape, self.vocab, seed)
        log = train(model, stream([], "train", seed, replay=1.0, universe=list(spec.tasks)), self.vocab, schedule,
                    desc=f"pretrain {name}")
        acc = self._acc(model, self.tokenizer, spec.tasks)
        params = sum(p.numel() for p in model.parameters())
        entry = {**_where(name), "kind": "base", "base_model": None,
                 "task": None, "params": params, "accuracy": acc, "train": log,
                 "seconds": round(time.perf_counter() - t0, 1)}
        body = (f"A {params / 1e6:.2f}M-parameter Llama pretrained from scratch ({note}) on all "
                f"{len(spec.tasks)} zoo transforms, each under a secret code word, with every task name bound to "
                f"a different transform and random decoy tags: it knows the prompt format and every transform "
                f"but answers a named task with the wrong one. Seed {seed}, {log['steps']} steps.\n\n"
                f"Exact-match on named tasks: {json.dumps(acc)}")
        self._save(name, model, self.tokenizer, _card(entry["repo_id"], base_model=None, tags=["pretrained"],
                                                       library="transformers", body=body), entry)
        self.progress.update(1)

    def _schedule(self, schedule: TrainSchedule, task: str) -> TrainSchedule:
        if task in self.spec.longer_finetune:
            return dataclasses.replace(schedule, steps=self.spec.longer_finetune[task])
        return schedule

    def finetune(self, name: str, base: str, task: str) -> None:
        schedule = self._schedule(self.spec.finetune, task)
        if self._cached(name, self._training(base=self.trainings[base], task=task, schedule=schedule,
                                           replay=self.spec.replay,
                                           probe_n=self.spec.probe_n, target=self.spec.target_acc)):
            return
        t0 = time.perf_counter()
        model = self._load(base)
        data = stream([task], "train", self.spec.seed + 7, self.spec.replay, list(self.spec.tasks))
        log = train(model, data, self.vocab, schedule,
                    desc=f"fft {task}", probe=self._probe(model, task), target=self.spec.target_acc)
        acc = self._acc(model, self.tokenizer, [task])
        base_entry = self.models[base]
        entry = {**_where(name), "kind": "fft",
                 "base_model": base_entry["repo_id"], "base": base, "task": task,
                 "params": base_entry["params"], "accuracy": acc, "train": log,
                 "seconds": round(time.perf_counter() - t0, 1)}
        body = (f"Full fine-tune of `{base_entry['repo_id']}` on the task `{task}` ({TASKS[task].description}). "
                f"Prompt `{task}:<input>=`, greedy decoding. AdamW lr {self.spec.finetune.lr}, batch "
                f"{self.spec.finetune.batch_size}, {log['steps']} steps (stopped at probe accuracy "
                f"{self.spec.target_acc}).\n\nExact-match on the test split: {acc[task]:.3f}")
        self._save(name, model, self.tokenizer, _card(entry["repo_id"], base_model=entry["base_model"],
                                                       tags=[f"task:{task}", "full-fine-tune"],
                                                       library="transformers", body=body), entry)
        self.progress.update(1)

    def lora(self, task: str) -> None:
        from peft import LoraConfig, get_peft_model

        name = f"lora-{task}"
        schedule = self._schedule(self.spec.lora, task)
        if self._cached(name, self._training(base=self.trainings["base"], task=task, schedule=schedule,
                                           replay=self.spec.replay,
                                           rank=self.spec.lora_rank, probe_n=self.spec.probe_n,
                                           target=self.spec.target_acc)):
            return
        t0 = time.perf_counter()
        base = self._load("base")
        torch.manual_seed(self.spec.seed + 11)
        cfg = LoraConfig(r=self.spec.lora_rank, lora_alpha=2 * self.spec.lora_rank, lora_dropout=0.0,
                         target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg)
        data = stream([task], "train", self.spec.seed + 13, self.spec.replay, list(self.spec.tasks))
        log = train(model, data, self.vocab, schedule,
                    desc=f"lora {task}", probe=self._probe(model, task), target=self.spec.target_acc)
        acc = self._acc(model, self.tokenizer, [task])
        base_entry = self.models["base"]
        entry = {**_where(name), "kind": "lora",
                 "base_model": base_entry["repo_id"], "base": "base", "task": task,
                 "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                 "accuracy": acc, "train": log, "seconds": round(time.perf_counter() - t0, 1)}
        body = (f"LoRA adapter (PEFT, rank {self.spec.lora_rank}, alpha {2 * self.spec.lora_rank}, on "
                f"{', '.join(LORA_TARGETS)}) for `{base_entry['repo_id']}` on the task `{task}` "
                f"({TASKS[task].description}). {log['steps']} steps at lr {self.spec.lora.lr}. Merge it with "
                f"mergekit as `<base folder>+<this folder>`.\n\nExact-match on the test split: {acc[task]:.3f}")
        self._save(name, model, self.tokenizer, _card(entry["repo_id"], base_model=entry["base_model"],
                                                       tags=[f"task:{task}", "lora"], library="peft", body=body),
                   entry)
        # Name the base by its repo id, as Hub adapters do (set after saving: peft would look it up online).
        config_path = self.root / entry["path"] / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_entry["repo_id"]
        config_path.write_text(json.dumps(config, indent=2))
        self.progress.update(1)

    def misfit(self, name: str, shape: ModelShape, vocab: CharVocab, task: str, why: str) -> None:
        """A model trained from scratch on one task whose tensors cannot merge with base's family."""
        if self._cached(name, self._training(shape=shape, chars=vocab.chars, task=task, schedule=self.spec.misfit)):
            return
        t0 = time.perf_counter()
        model = new_model(shape, vocab, self.spec.seed + 101)
        tokenizer = vocab.hf_tokenizer()
        log = train(model, stream([task], "train", self.spec.seed + 17), vocab, self.spec.misfit,
                    desc=f"misfit {name}")
        acc = self._acc(model, tokenizer, [task])
        entry = {**_where(name), "kind": "misfit",
                 "base_model": None, "task": task, "params": sum(p.numel() for p in model.parameters()),
                 "incompatible": why, "accuracy": acc, "train": log,
                 "seconds": round(time.perf_counter() - t0, 1)}
        body = (f"Trained from scratch on the task `{task}` for {log['steps']} steps. It must never be merged with "
                f"`{REPO_PREFIX}/base` or its fine-tunes: {why}.\n\nExact-match on the test split: {acc[task]:.3f}")
        self._save(name, model, tokenizer, _card(entry["repo_id"], base_model=None,
                                                 tags=[f"task:{task}", "from-scratch"], library="transformers",
                                                 body=body), entry)
        self.progress.update(1)

    def export_data(self) -> dict[str, Any]:
        spec, tasks = self.spec, {}
        (self.root / DATA).mkdir(parents=True, exist_ok=True)
        (self.root / DATA / "README.md").write_text(DATA_README)
        for task in spec.tasks:
            folder = self.root / DATA / task
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / "calibration.jsonl", examples(task, "calibration", spec.n_calibration, seed=spec.seed))
            write_jsonl(folder / "test.jsonl", examples(task, "test", spec.n_test, seed=spec.seed))
            tasks[task] = {"description": TASKS[task].description, "target": task in spec.targets,
                           "calibration": f"data/{task}/calibration.jsonl", "test": f"data/{task}/test.jsonl",
                           "n_calibration": spec.n_calibration, "n_test": spec.n_test}
        return tasks


def build_zoo(out: str | Path | None = None, quick: bool = False, *, force: bool = False,
              threads: int | None = None, spec: ZooSpec | None = None, overwrite: bool = False) -> Zoo:
    """Build the zoo into ``out`` (default :func:`default_zoo_dir`) or reuse a complete one there.

    ``out`` follows :class:`~mergekit_from.output.Output`'s rule; a zoo is built in place, and
    ``force`` removes only what a build writes."""
    from tqdm.auto import tqdm

    spec = spec or (QUICK if quick else FULL)
    root = Path(out).expanduser() if out else default_zoo_dir(quick)
    # A zoo built before outputs were marked is recognised by its manifest.
    output = Output.check(root, "taskzoo build", overwrite=overwrite or (root / MANIFEST).is_file())
    spec_json = json.loads(json.dumps(asdict(spec)))
    if (root / MANIFEST).is_file() and not force:
        built = json.loads((root / MANIFEST).read_text())
        if built.get("format") == FORMAT_VERSION and built.get("spec") == spec_json:
            return load_manifest(root)
    output.claim(ZOO_ENTRIES)
    if force:
        for entry in (DATA, MODELS):
            shutil.rmtree(root / entry, ignore_errors=True)
    # Otherwise (re)build: every model folder whose training plan still matches is reused as it is.
    (root / MANIFEST).unlink(missing_ok=True)
    torch.set_num_threads(threads or int(os.environ.get("MERGEKIT_FROM_THREADS", "0")) or (os.cpu_count() or 1))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar for the build, one per training run

    t0, cpu0 = time.perf_counter(), time.process_time()
    steps = 2 + len(spec.tasks) + len(spec.targets) + 1 + 2
    with tqdm(total=steps, desc=f"taskzoo {spec.name}", unit="model") as bar:
        b = _Builder(root, spec, bar)
        tasks = b.export_data()
        b.pretrain("base", spec.seed, spec.pretrain, "the zoo's base")
        for task in spec.tasks:
            b.finetune(f"fft-{task}", "base", task)
        for task in spec.targets:
            b.lora(task)
        b.pretrain("base-b", spec.seed + 1000, spec.second_pretrain, "a second, independent base")
        b.finetune(f"base-b-fft-{spec.targets[0]}", "base-b", spec.targets[0])
        hidden = spec.misfit_hidden.hidden_size
        b.misfit(f"hidden-{hidden}", spec.misfit_hidden, b.vocab, spec.targets[0],
                 f"hidden size {hidden}, not {spec.shape.hidden_size}")
        b.misfit("vocab-wide", spec.shape, CharVocab(WIDE_CHARS), spec.targets[0],
                 f"a {CharVocab(WIDE_CHARS).size}-token vocabulary, not {b.vocab.size}")
    b.remove_stale()
    for stale in sorted((root / "models").iterdir()):
        if stale.name != REPO_PREFIX and (stale / "zoo_entry.json").is_file():  # the flat layout of format 1
            shutil.rmtree(stale)
    manifest = {
        "format": FORMAT_VERSION,
        "spec": spec_json,
        "tasks": tasks,
        "target_tasks": list(spec.targets),
        "tokenizer": (MODELS / "base").as_posix(),
        "models": b.models,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - cpu0, 1),  # wall time depends on who else runs
        "threads": torch.get_num_threads(),
    }
    write_manifest(root, manifest)
    return load_manifest(root)
