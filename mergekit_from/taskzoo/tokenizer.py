"""A character-level tokenizer in the Hugging Face format (``tokenizer.json``, no remote code).

Every character is one token (a ``tokenizers`` WordLevel model behind a one-character Split
pre-tokenizer, with a Fuse decoder), and ``<s>`` is prepended as a template. ``AutoTokenizer``
loads the saved folder as a ``PreTrainedTokenizerFast``. Training uses :class:`CharVocab`
directly (the same ids, without the per-call overhead of the HF tokenizer).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = string.ascii_lowercase + string.digits + ":=?|-_"
# The "different vocabulary" model of the zoo: the same characters plus upper case.
WIDE_CHARS = CHARS + string.ascii_uppercase


@dataclass(frozen=True)
class CharVocab:
    chars: str = CHARS

    @property
    def tokens(self) -> list[str]:
        return [*SPECIALS, *self.chars]

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    @property
    def pad_token_id(self) -> int:
        return self.pad_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """As the saved HF tokenizer tokenises (``<s>`` prepended), for :func:`mergekit_from.calibration.encode`."""
        return {"input_ids": ([self.bos_id] if add_special_tokens else []) + self.encode(text)}

    def encode(self, text: str) -> list[int]:
        base = len(SPECIALS)
        return [base + self.chars.index(c) if c in self.chars else self.unk_id for c in text]

    def decode(self, ids: list[int]) -> str:
        base = len(SPECIALS)
        return "".join(self.chars[i - base] for i in ids if i >= base)

    def hf_tokenizer(self):
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(self.tokens)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", self.bos_id)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            padding_side="left",
            model_max_length=64,
        )

    def save(self, directory: Path) -> None:
        self.hf_tokenizer().save_pretrained(str(directory))
