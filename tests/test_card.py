"""Model cards: one writer on huggingface_hub's ModelCard, whose metadata reads back as written."""

from __future__ import annotations

from huggingface_hub import ModelCard
from mergekit import merge_methods

from mergekit_from.card import write_card
from mergekit_from.release import Release, Source, write_release_card


def test_metadata_reads_back_whatever_the_values_hold(tmp_path):
    """A hand-written ``base_model: {path}`` line broke the YAML for a path with ": " in it."""
    write_card(tmp_path, "# adapter\n\nbody", base_model="/data/runs: old/base", library_name="peft",
               tags=["merge", "lora"], pipeline_tag=None)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "/data/runs: old/base" and card.data.tags == ["merge", "lora"]
    assert "pipeline_tag" not in card.data.to_dict() and card.text.strip() == "# adapter\n\nbody"


def test_release_card_names_the_method_as_its_spec_does(tmp_path):
    """The card took the method's name from a copy that disagreed with the registered spec."""
    release = Release(base=Source("org/base", "abc"), sources=[Source("org/a", "def", 0.5, 1.0, 1.0)],
                      method="fw_hard", settings={}, target="math", recipe="merge_method: fw_hard", endpoint="http://h")
    write_release_card(tmp_path, release)
    card = ModelCard.load(tmp_path / "README.md")
    spec = merge_methods.get("fw_hard").spec
    assert f"{spec.pretty_name} ([arXiv:2503.12649]({spec.reference_url}))" in card.text
    assert card.data.base_model == ["org/base", "org/a"] and card.data.base_model_relation == "merge"
