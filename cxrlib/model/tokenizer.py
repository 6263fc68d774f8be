"""The report tokenizer: a byte-level BPE with BOS, EOS and PAD, saved with the model.

Two origins, one interface (:class:`ReportTokenizer`):

- :meth:`ReportTokenizer.train` fits a byte-level BPE on the training Findings with the
  ``tokenizers`` library (for a decoder built from a config). Special tokens
  ``<|pad|>``, ``<|bos|>``, ``<|eos|>`` take ids 0, 1, 2; the 256 byte symbols are
  always in the vocabulary, so any text round-trips, even with no merges learned.
- :meth:`ReportTokenizer.from_pretrained` loads a pretrained decoder's own tokenizer
  (GPT-2's: ``<|endoftext|>`` is BOS, EOS and PAD at once; labels mask PAD by the
  attention mask, never by id, so the final EOS is still learned).

Every text is encoded as ``BOS text EOS``: the model is taught to stop.
Files: ``tokenizer.json`` (the ``tokenizers`` format) and ``tokenizer_config.json``
(the special tokens), readable by transformers' ``PreTrainedTokenizerFast`` as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cxrlib.base.errors import CxrError
from cxrlib.model.hub import load_from_hub

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
TOKENIZER_FILE = "tokenizer.json"
SPECIALS_FILE = "tokenizer_config.json"


class ReportTokenizer:
    """A ``tokenizers.Tokenizer`` with named BOS, EOS and PAD tokens.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer
        The byte-level BPE (or GPT-2's tokenizer).
    bos_token, eos_token, pad_token : str
        Special tokens; each must be in the vocabulary (they may coincide, as in GPT-2).
    """

    def __init__(self, tokenizer: Tokenizer, bos_token: str, eos_token: str, pad_token: str):
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        ids = [tokenizer.token_to_id(t) for t in (bos_token, eos_token, pad_token)]
        if any(i is None for i in ids):
            raise CxrError(
                f"tokenizer: special tokens {bos_token!r}, {eos_token!r}, {pad_token!r} "
                "must all be in the vocabulary"
            )
        self.bos_id, self.eos_id, self.pad_id = ids

    # --- construction ----------------------------------------------------------------

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
    ) -> ReportTokenizer:
        """Fit a byte-level BPE on ``texts`` (the training Findings).

        Parameters
        ----------
        texts : iterable of str
            Training texts; may be empty (then only the 256 bytes and the specials).
        vocab_size : int
            Largest vocabulary, specials and the 256 byte symbols included (>= 259).
        min_frequency : int
            Pairs seen fewer times are not merged.
        """
        if vocab_size < 259:
            raise CxrError(f"vocab_size: needs at least 259 (got {vocab_size})")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD, BOS, EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((t for t in texts if t), trainer=trainer)
        return cls(tok, BOS, EOS, PAD)

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, token: str | None = None
    ) -> ReportTokenizer:
        """A pretrained decoder's tokenizer (hub id or folder), or one saved by :meth:`save`.

        GPT-2's has no BOS/PAD of its own: its ``<|endoftext|>`` serves as all three.
        ``token`` is the hub access token (default: the ``HF_TOKEN`` environment
        variable); a hub id loads through :func:`~cxrlib.model.hub.load_from_hub`.
        """
        folder = Path(source)
        if (folder / TOKENIZER_FILE).is_file() and (folder / SPECIALS_FILE).is_file():
            specials = json.loads((folder / SPECIALS_FILE).read_text())
            if all(isinstance(specials.get(k), str) for k in ("bos_token", "eos_token")):
                tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
                eos = specials["eos_token"]
                pad = (
                    specials.get("pad_token") if isinstance(specials.get("pad_token"), str) else eos
                )
                return cls(tok, specials["bos_token"], eos, pad)
        from transformers import AutoTokenizer

        hf = load_from_hub("decoder", source, AutoTokenizer.from_pretrained, token)
        eos = hf.eos_token
        if eos is None:
            raise CxrError(f"tokenizer of {source!s} has no EOS token")
        bos = hf.bos_token or eos
        pad = hf.pad_token or eos
        return cls(hf.backend_tokenizer, bos, eos, pad)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        specials = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        (folder / SPECIALS_FILE).write_text(json.dumps(specials, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ReportTokenizer:
        """Read a tokenizer written by :meth:`save` (no network)."""
        folder = Path(folder)
        for name in (TOKENIZER_FILE, SPECIALS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: tokenizer file missing")
        return cls.from_pretrained(folder)

    # --- use -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (specials included)."""
        return len(self)

    @property
    def special_ids(self) -> set[int]:
        """Ids of BOS, EOS and PAD."""
        return {self.bos_id, self.eos_id, self.pad_id}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids``: stops at the first EOS after any leading token, drops BOS/PAD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out: list[int] = []
        for i, tid in enumerate(ids):
            if tid == self.eos_id and not (i == 0 and tid == self.bos_id):
                break
            if tid not in self.special_ids:
                out.append(tid)
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def batch(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Training tensors for ``texts``: ``BOS text EOS``, right-padded.

        A text longer than ``max_length - 2`` tokens is cut to ``max_length - 1`` tokens
        after BOS and gets no EOS (it did not end there).

        Returns
        -------
        dict
            ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 (1 = token),
            ``labels`` (B, T) int64: the input ids with -100 at padding, for
            :class:`ReportModel`'s loss (shifted inside the model). T = longest row.
        """
        if max_length < 2:
            raise ValueError(f"max_length: needs room for BOS and EOS (got {max_length})")
        rows = []
        for text in texts:
            ids = self.encode(text)
            if len(ids) <= max_length - 2:
                rows.append([self.bos_id, *ids, self.eos_id])
            else:
                rows.append([self.bos_id, *ids[: max_length - 1]])
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
