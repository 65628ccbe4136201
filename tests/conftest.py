"""Shared fixtures: tiny Llama models on disk, an in-process runner for the CLI, and a folder of
tiny HF model folders served by a local Hub with a fresh zoo store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import mergekit_from` does, before torch loads

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

import mergekit_from  # noqa: F401
from mergekit_from.cli import main

sys.path.insert(0, str(Path(__file__).parent))

from zoo_fixtures import GATED, build_zoo  # noqa: E402


def make_llama(path: Path, seed: int = 0, vocab: int = 64, hidden: int = 32, layers: int = 2) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=layers, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def make_finetune(base: Path, out: Path, scale: float, seed: int, only: str | None = None) -> Path:
    """A 'fine-tune' of ``base``: every floating tensor (or those whose name contains ``only``)
    moved by scale * N(0, 1) noise; same config, same layout."""
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    sd = load_file(str(base / "model.safetensors"))
    for name, t in sd.items():
        if t.is_floating_point() and (only is None or only in name):
            sd[name] = t + scale * torch.randn(t.shape, generator=g)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text((base / "config.json").read_text())
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = make_llama(root / "base")
    return {
        "base": base,
        "a": make_finetune(base, root / "ft_a", 0.01, seed=1),
        "b": make_finetune(base, root / "ft_b", 0.03, seed=2),
        "c": make_finetune(base, root / "ft_c", 0.02, seed=3),
        "mlp_only": make_finetune(base, root / "ft_mlp", 0.02, seed=4, only="mlp"),
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def merge(tmp_path: Path, recipe: dict, name: str = "out") -> dict[str, torch.Tensor]:
    """Run a recipe through `mergekit-from yaml` and return the merged state dict."""
    cfg = write_recipe(tmp_path / f"{name}.yml", recipe)
    out = tmp_path / name
    result = run_cli("yaml", cfg, out, "--no-copy-tokenizer", "--quiet")
    assert result.exit_code == 0, result.output
    return load_model(out)


def load_model(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory):
    """The quick task zoo, built once per test session (about 20 s on one core)."""
    from mergekit_from.taskzoo import build_zoo as build_task_zoo

    return build_task_zoo(tmp_path_factory.mktemp("taskzoo"), quick=True)


@pytest.fixture(scope="session")
def _built_zoo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


@pytest.fixture(scope="session")
def zoo_dir(_built_zoo) -> Path:
    return _built_zoo[0]


@pytest.fixture(scope="session")
def zoo_layout(_built_zoo) -> dict[str, str]:
    """{repo_id: relation to its parent, or "base"}."""
    return _built_zoo[1]


@pytest.fixture
def hub(zoo_dir):
    from zoo.hub_server import HubServer

    with HubServer(zoo_dir, page_size=3, gated={GATED: "manual"}) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1; skipped where PostgreSQL is not installed, unless
    MERGEKIT_FROM_REQUIRE_POSTGRES=1 (set by .ci/run) makes that a failure."""
    from pg_server import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("MERGEKIT_FROM_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (MERGEKIT_FROM_REQUIRE_POSTGRES=1) but initdb/pg_ctl are not installed")
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl)")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'zoo.sqlite'}"


@pytest.fixture
def store(db_url):
    from db import open_store

    s = open_store(db_url)
    yield s
    s.close()


@pytest.fixture
def make_crawler(store, hub, tmp_path):
    """Crawlers against the local Hub, no token, an isolated file cache, quick backoff."""
    from zoo.crawler import Crawler
    from zoo.resilience import RetryPolicy

    def make(**kw):
        kw.setdefault("retry", RetryPolicy(floor_s=0.01))
        return Crawler(kw.pop("store", store), hub.endpoint, token=False, cache_dir=tmp_path / "hf-cache",
                       progress=False, **kw)

    return make


@pytest.fixture(scope="session")
def _crawled_file(zoo_dir, tmp_path_factory) -> Path:
    """One full recursive crawl of the zoo, done once; tests get copies."""
    from db import open_store
    from zoo.crawler import Crawler
    from zoo.hub_server import HubServer

    tmp = tmp_path_factory.mktemp("crawled")
    with HubServer(zoo_dir, page_size=3, gated={GATED: "manual"}) as server:
        store = open_store(f"sqlite:///{tmp / 'zoo.sqlite'}")
        Crawler(store, server.endpoint, token=False, cache_dir=tmp / "hf-cache", progress=False).crawl_tree(
            "acme/tiny-llama", recursive=True)
        store.close()  # the last connection checkpoints the WAL into the main file
    return tmp / "zoo.sqlite"


@pytest.fixture
def crawled(_crawled_file, tmp_path):
    """A store holding the crawled zoo (a private copy)."""
    import shutil

    from db import open_store

    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{_crawled_file}{suffix}")
        if src.exists():
            shutil.copy(src, tmp_path / f"crawled.sqlite{suffix}")
    s = open_store(f"sqlite:///{tmp_path / 'crawled.sqlite'}")
    yield s
    s.close()
