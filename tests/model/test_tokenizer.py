"""ReportTokenizer: byte-level BPE on Findings, BOS/EOS/PAD, save/load, GPT-2 style."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from cxrlib.base.errors import CxrError
from cxrlib.model import ReportTokenizer
from cxrlib.model.tokenizer import BOS, EOS, PAD
from tests.model import TEXTS


def test_trained_bpe_round_trips_and_has_distinct_specials():
    tok = ReportTokenizer.train(TEXTS * 5, vocab_size=300)
    assert 259 < len(tok) <= 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for text in [*TEXTS, "Über 5 mm — «effusion» ✓", "  two  spaces\nand a newline"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode())  # merges were learned


def test_empty_corpus_gives_bytes_only():
    tok = ReportTokenizer.train([], vocab_size=1000)
    assert len(tok) == 259
    assert tok.decode(tok.encode("Cardiomegaly, 2 cm.")) == "Cardiomegaly, 2 cm."
    with pytest.raises(CxrError, match="vocab_size"):
        ReportTokenizer.train(TEXTS, vocab_size=100)


def test_batch_adds_bos_eos_pads_right_and_masks_labels():
    tok = ReportTokenizer.train(TEXTS, vocab_size=300)
    out = tok.batch(["No effusion.", "Mild cardiomegaly. Small effusion."], max_length=64)
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    n0 = len(tok.encode("No effusion.")) + 2
    assert ids[0, 0] == tok.bos_id and ids[0, n0 - 1] == tok.eos_id
    assert (ids[0, n0:] == tok.pad_id).all() and mask[0].sum() == n0
    assert (labels[0, n0:] == -100).all() and torch.equal(labels[0, :n0], ids[0, :n0])
    assert mask[1].all() and ids[1, -1] == tok.eos_id
    cut = tok.batch([TEXTS[0]], max_length=5)["input_ids"][0]
    assert len(cut) == 5 and cut[0] == tok.bos_id and tok.eos_id not in cut.tolist()


def test_decode_stops_at_eos_and_drops_specials():
    tok = ReportTokenizer.train(TEXTS, vocab_size=300)
    ids = [tok.bos_id, *tok.encode("Lungs are clear."), tok.eos_id, *tok.encode("junk")]
    assert tok.decode(ids) == "Lungs are clear."
    assert tok.decode(torch.tensor(ids)) == "Lungs are clear."


def test_save_load(tmp_path):
    tok = ReportTokenizer.train(TEXTS, vocab_size=300)
    tok.save(tmp_path)
    again = ReportTokenizer.load(tmp_path)
    assert (again.bos_id, again.eos_id, again.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS)
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)  # readable by transformers too
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (BOS, EOS, PAD)
    with pytest.raises(FileNotFoundError):
        ReportTokenizer.load(tmp_path / "missing")


def test_gpt2_style_tokenizer_uses_endoftext_for_everything(tmp_path):
    base = ReportTokenizer.train(TEXTS, vocab_size=300)
    eot = "<|eos|>"
    hf = PreTrainedTokenizerFast(tokenizer_object=base.tokenizer, eos_token=eot, bos_token=eot)
    hf.save_pretrained(tmp_path)
    tok = ReportTokenizer.from_pretrained(tmp_path)
    assert tok.bos_id == tok.eos_id == tok.pad_id
    out = tok.batch(["No effusion.", TEXTS[0]], max_length=64)
    n0 = len(tok.encode("No effusion.")) + 2
    # padding is masked by the attention mask, not by id: the final EOS is still a label
    assert out["labels"][0, n0 - 1] == tok.eos_id and (out["labels"][0, n0:] == -100).all()
    assert tok.decode(out["input_ids"][0]) == "No effusion."
