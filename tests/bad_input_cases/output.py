"""Output folders that a command must refuse before it computes anything (issue 11 items 1 and 8):
an existing file, a path below a file, a folder holding the run's inputs, a non-empty folder that
mergekit-from did not write. Whatever was there stays byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.bad_input_cases import Case, Run
from tests.bad_input_cases.recipe import from_recipe
from tests.fixtures.models import write_recipe


NO_HUB = "http://127.0.0.1:9"  # never reached: the output is refused first
QUIET = ["--no-copy-tokenizer", "--quiet"]


def _write(path: Path, text: str = "keep me\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _project(env) -> Path:
    """A folder as a user keeps it: the recipe, the models it names (relative paths) and notes."""
    proj = env.tmp / "proj"
    for name in ("base", "a", "b"):
        shutil.copytree(env.tiny[name], proj / name)
    write_recipe(proj / "recipe.yml", {"merge_method": "from", "base_model": "./base",
                                      "models": [{"model": "./a"}, {"model": "./b"}], "parameters": {"k": 2}})
    _write(proj / "notes.txt")
    return proj


def _yaml_into_project(env) -> Run:
    proj = _project(env)
    return Run(["yaml", "recipe.yml", ".", *QUIET], protect=[proj], culprit="recipe.yml", cwd=proj)


def _yaml_into_models(env) -> Run:
    models = env.tmp / "models"
    for name in ("base", "a", "b"):
        shutil.copytree(env.tiny[name], models / name)
    cfg = write_recipe(env.tmp / "r.yml", from_recipe(env, models / "a", models / "b") | {"base_model": str(models / "base")})
    return Run(["yaml", str(cfg), str(models), *QUIET], protect=[models, cfg], culprit=str(models / "base"))


def _yaml_to(out_of):
    def build(env) -> Run:
        cfg = write_recipe(env.tmp / "r.yml", from_recipe(env, env.tiny["a"], env.tiny["b"], k=2))
        out, culprit, protect = out_of(env)
        return Run(["yaml", str(cfg), str(out), *QUIET], protect=[*protect, cfg], culprit=culprit)

    return build


def _existing_jsonl(env):
    data = _write(env.tmp / "train.jsonl", '{"text": "abc"}\n')
    return data, "train.jsonl", [data]


def _below_file(env):
    notes = _write(env.tmp / "notes.txt")
    return notes / "out", "notes.txt", [notes]


def _foreign_folder(env):
    folder = env.tmp / "mine"
    _write(folder / "notes.txt")
    _write(folder / "sub" / "data.bin", "x" * 100)
    return folder, str(folder), [folder]


def _adapters(env, where: Path) -> list[Path]:
    from tests.fixtures.models import make_adapter

    return [make_adapter(env.tiny["base"], where / f"lora_{i}", seed=i) for i in (1, 2)]


def _lora_into_adapters(env) -> Run:
    proj = env.tmp / "adapters"
    a, b = _adapters(env, proj)
    _write(proj / "notes.txt")
    return Run(["lora", ".", a.name, b.name], protect=[proj], culprit="lora_1", cwd=proj)


def _lora_to(out_of):
    def build(env) -> Run:
        a, b = _adapters(env, env.tmp / "in")
        out, culprit, protect = out_of(env)
        return Run(["lora", str(out), str(a), str(b)], protect=[*protect, a, b], culprit=culprit)

    return build


def _auto(env, out: Path, *extra: str) -> list[str]:
    return ["auto", "--base", "acme/tiny-llama", "--target", "anything", "--out", str(out), "--endpoint", NO_HUB,
            "--db", f"sqlite:///{env.tmp / 'zoo.sqlite'}", "--cache-dir", str(env.tmp / "hf-cache"), "--quiet", *extra]


def _auto_into_calibration(env) -> Run:
    work = env.tmp / "work"
    _write(work / "math.jsonl", '{"prompt": "1+1=", "response": "2"}\n')
    return Run(_auto(env, Path("."), "--calib", "math.jsonl"), protect=[work], culprit="math.jsonl", cwd=work)


def _auto_into_store(env) -> Run:
    work = env.tmp / "work"
    store = _write(work / "zoo.sqlite", "")
    argv = _auto(env, work, "--method", "from")
    argv[argv.index("--db") + 1] = f"sqlite:///{store}"
    return Run(argv, protect=[work], culprit=str(store))


def _auto_to(out_of):
    def build(env) -> Run:
        out, culprit, protect = out_of(env)
        return Run(_auto(env, out, "--method", "from"), protect=protect, culprit=culprit)

    return build


def _taskzoo_to(out_of):
    def build(env) -> Run:
        out, culprit, protect = out_of(env)
        return Run(["taskzoo", "build", "--quick", "--out", str(out)], protect=protect, culprit=culprit)

    return build


def _demo_to(out_of):
    def build(env) -> Run:
        out, culprit, protect = out_of(env)
        return Run(["demo", "--quick", "--out", str(out), "--zoo", str(env.tmp / "zoo")], protect=protect,
                   culprit=culprit)

    return build


FILE = "is an existing file, not a folder"
BELOW = "is a file, not a folder"
HOLDS = "contains the run's input"
FOREIGN = "not written by mergekit-from; pass --overwrite"

CASES = [
    Case("yaml-out-recipe-folder", "cd proj && mergekit-from yaml recipe.yml .  # recipe, models, notes in proj",
         HOLDS, _yaml_into_project),
    Case("yaml-out-holds-models", "mergekit-from yaml recipe.yml models/  # base and experts in models/", HOLDS,
         _yaml_into_models),
    Case("yaml-out-existing-jsonl", "mergekit-from yaml recipe.yml train.jsonl", FILE, _yaml_to(_existing_jsonl)),
    Case("yaml-out-below-file", "mergekit-from yaml recipe.yml notes.txt/out", BELOW, _yaml_to(_below_file)),
    Case("yaml-out-foreign-folder", "mergekit-from yaml recipe.yml mine/  # a folder of the user's files", FOREIGN,
         _yaml_to(_foreign_folder)),
    Case("lora-out-adapter-folder", "cd adapters && mergekit-from lora . lora_1 lora_2", HOLDS, _lora_into_adapters),
    Case("lora-out-existing-file", "mergekit-from lora train.jsonl A B", FILE, _lora_to(_existing_jsonl)),
    Case("lora-out-below-file", "mergekit-from lora notes.txt/out A B", BELOW, _lora_to(_below_file)),
    Case("lora-out-foreign-folder", "mergekit-from lora mine/ A B", FOREIGN, _lora_to(_foreign_folder)),
    Case("auto-out-calibration-folder", "cd work && mergekit-from auto ... --calib math.jsonl --out .", HOLDS,
         _auto_into_calibration, fixtures=()),
    Case("auto-out-holds-store", "mergekit-from auto ... --db sqlite:///work/zoo.sqlite --out work", HOLDS,
         _auto_into_store, fixtures=()),
    Case("auto-out-existing-jsonl", "mergekit-from auto ... --out train.jsonl", FILE, _auto_to(_existing_jsonl),
         fixtures=()),
    Case("auto-out-below-file", "mergekit-from auto ... --out notes.txt/out", BELOW, _auto_to(_below_file),
         fixtures=()),
    Case("auto-out-foreign-folder", "mergekit-from auto ... --out mine/", FOREIGN, _auto_to(_foreign_folder),
         fixtures=()),
    Case("taskzoo-out-existing-file", "mergekit-from taskzoo build --quick --out train.jsonl", FILE,
         _taskzoo_to(_existing_jsonl), fixtures=()),
    Case("taskzoo-out-below-file", "mergekit-from taskzoo build --quick --out notes.txt/out", BELOW,
         _taskzoo_to(_below_file), fixtures=()),
    Case("taskzoo-out-foreign-folder", "mergekit-from taskzoo build --quick --out mine/", FOREIGN,
         _taskzoo_to(_foreign_folder), fixtures=()),
    Case("demo-out-existing-file", "mergekit-from demo --quick --out train.jsonl", FILE, _demo_to(_existing_jsonl),
         fixtures=()),
    Case("demo-out-foreign-folder", "mergekit-from demo --quick --out mine/", FOREIGN, _demo_to(_foreign_folder),
         fixtures=()),
]
