"""ReportModel: the public contract, the encoder, gradients, save/load, configs."""

import json

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel, GPT2Config, GPT2LMHeadModel

from cxrlib.base.errors import CxrError
from cxrlib.model import ModelConfig, ReportModel, ReportTokenizer
from tests.model import (  # noqa: F401 (one_thread: an autouse fixture)
    DECODER,
    ENCODER,
    IMPLS,
    MODES,
    TEXTS,
    batch_inputs,
    one_thread,
    random_priors,
    small_config,
    small_model,
)
from tests.numerics import assert_rounding_close

# --- the contract on the tiny preset -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tiny_preset_contract(mode):
    cfg = ModelConfig.tiny(mode=mode)
    assert (cfg.image_size, cfg.patch_size, cfg.num_patches) == (224, 16, 196)
    torch.manual_seed(0)
    model = ReportModel.from_config(cfg, texts=TEXTS)
    assert model.num_patches == 196 and model.num_decoder_layers == 4
    batch = model.tokenizer.batch(TEXTS[:2], cfg.max_text_tokens)
    priors = torch.rand(2, model.num_decoder_layers, model.num_patches)
    out = model(
        pixel_values=torch.randn(2, 3, 224, 224),
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        priors=priors,
        labels=batch["labels"],
        output_attentions=True,
    )
    length = batch["input_ids"].shape[1]
    assert out.logits.shape == (2, length, len(model.tokenizer))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert len(out.attentions) == 4
    assert all(a.shape == (2, 4, 196 + length, 196 + length) for a in out.attentions)
    ids = model.generate_ids(
        pixel_values=torch.randn(2, 3, 224, 224), priors=priors, max_new_tokens=4
    )
    assert ids.shape[0] == 2 and ids.shape[1] <= 4
    assert len(model.generate(image_features=torch.randn(2, 196, 96), max_new_tokens=3)) == 2


def test_image_features_replace_pixel_values_exactly():
    model = small_model("soft")
    inputs = batch_inputs(model)
    priors = random_priors(model)
    with torch.no_grad():
        direct = model(**inputs, priors=priors)
        features = model.encode_images(inputs["pixel_values"])
        pixels = inputs.pop("pixel_values")
        cached = model(**inputs, image_features=features, priors=priors)
    assert features.shape == (2, model.num_patches, ENCODER["hidden_size"])
    # exact by construction: the same encoder call on the same batch, then the same decoder
    assert torch.equal(direct.logits, cached.logits) and torch.equal(direct.loss, cached.loss)
    with pytest.raises(ValueError, match="exactly one"):
        model(**inputs, pixel_values=pixels, image_features=features)


@pytest.mark.parametrize("registers", [0, 3])
def test_cls_and_register_tokens_are_dropped_from_the_config(registers):
    model = small_model(encoder={**ENCODER, "num_register_tokens": registers})
    pixels = batch_inputs(model)["pixel_values"]
    with torch.no_grad():
        full = model.encoder(pixel_values=pixels).last_hidden_state
        patches = model.encode_images(pixels)
    assert full.shape[1] == 1 + registers + 16
    assert torch.equal(patches, full[:, 1 + registers :])


def test_inputs_are_checked():
    model = small_model("soft")
    inputs = batch_inputs(model)
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.zeros(2, 3, 32, 32), input_ids=inputs["input_ids"])
    for bad in (
        torch.rand(2, 3, 16),
        torch.rand(2, 2, 16) + 1.0,
        torch.full((2, 2, 16), torch.nan),
    ):
        with pytest.raises(ValueError, match="priors"):
            model(**inputs, priors=bad.double())
    with pytest.raises(CxrError, match="patch"):
        ReportModel.from_config(small_config(encoder={**ENCODER, "patch_size": 8}), texts=TEXTS)
    with pytest.raises(ValueError, match="max_text_tokens"):
        model(pixel_values=inputs["pixel_values"], input_ids=torch.zeros(2, 30, dtype=torch.long))


def test_loss_is_cross_entropy_of_text_tokens():
    model = small_model("soft")
    inputs = batch_inputs(model, batch=3)
    out = model(**inputs, priors=random_priors(model, batch=3))
    logits, labels = out.logits[:, :-1], inputs["labels"][:, 1:]
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_left_or_right_leaves_real_tokens_unchanged(impl):
    model = small_model("strict", impl)
    inputs = batch_inputs(model, batch=2)
    priors = random_priors(model, zero_fraction=0.3)
    long_ids = model.tokenizer.batch([TEXTS[2]], 24)["input_ids"]  # longer than TEXTS[1]
    short = model.tokenizer.batch([TEXTS[1]], 24)["input_ids"]
    n, m = long_ids.shape[1], short.shape[1]
    pad = model.tokenizer.pad_id
    with torch.no_grad():
        alone = model(
            pixel_values=inputs["pixel_values"][1:], input_ids=short, priors=priors[1:]
        ).logits[0]
        for side in ("left", "right"):
            ids = torch.full((2, n), pad)
            mask = torch.zeros(2, n, dtype=torch.long)
            ids[0], mask[0] = long_ids[0], 1
            cols = slice(n - m, n) if side == "left" else slice(0, m)
            ids[1, cols], mask[1, cols] = short[0], 1
            both = model(
                pixel_values=inputs["pixel_values"],
                input_ids=ids,
                attention_mask=mask,
                priors=priors,
            ).logits[1, cols]
            assert_rounding_close(both, alone)


# --- encoder trainability --------------------------------------------------------------


def _grads(model):
    inputs = batch_inputs(model)
    model.train()
    model(**inputs, priors=random_priors(model)).loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_frozen_encoder_gets_no_gradients_and_stays_in_eval():
    model = small_model("soft", encoder_trainable="frozen")
    grads = _grads(model)
    assert not model.encoder.training and model.decoder.training
    assert all(g is None for n, g in grads.items() if n.startswith("encoder."))
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert grads["bridge.0.weight"].abs().sum() > 0
    assert grads["decoder.transformer.h.0.attn.c_attn.weight"].abs().sum() > 0


def test_last_n_blocks_train_and_the_rest_does_not():
    model = small_model("soft", encoder_trainable="last_n", encoder_trainable_blocks=1)
    grads = _grads(model)
    assert model.encoder.training
    trained = {n for n, g in grads.items() if n.startswith("encoder.") and g is not None}
    assert trained and all(
        n.startswith(("encoder.model.layer.1.", "encoder.norm.")) for n in trained
    )
    assert all(grads[n].abs().sum() > 0 for n in trained)
    assert grads["encoder.model.layer.0.attention.q_proj.weight"] is None


def test_fully_trainable_encoder_gets_gradients_everywhere():
    model = small_model("soft", encoder_trainable="all")
    grads = _grads(model)
    unused = {"encoder.embeddings.mask_token"}  # only used for masked-image pretraining
    for name, grad in grads.items():
        if name.startswith("encoder.") and name not in unused:
            assert grad is not None and grad.abs().sum() > 0, name
    # DINOv3's train-mode RoPE augmentation is off: features stay deterministic
    pixels = batch_inputs(model)["pixel_values"]
    assert torch.equal(model.encode_images(pixels), model.encode_images(pixels))


# --- save / load ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_save_load_round_trip_gives_identical_logits(tmp_path, impl, mode):
    model = small_model(mode, impl, learn_prior_strength=(mode == "soft"))
    if model.prior_strength is not None:
        with torch.no_grad():
            model.prior_strength.copy_(torch.tensor([0.5, 3.0]))
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    loaded = ReportModel.from_pretrained(tmp_path / "m").double().eval()
    assert loaded.config == model.config
    inputs = batch_inputs(model)
    priors = random_priors(model, zero_fraction=0.3)
    with torch.no_grad():
        a = model(**inputs, priors=priors)
        b = loaded(**inputs, priors=priors)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(
        model.generate_ids(pixel_values=inputs["pixel_values"], priors=priors),
        loaded.generate_ids(pixel_values=inputs["pixel_values"], priors=priors),
    )


def test_saved_folder_is_json_and_safetensors_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_write_me")
    model = small_model("soft")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config) >= {"model_config", "encoder_config", "decoder_config"}
    assert config["decoder_config"]["n_layer"] == 2
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert b"hf_do_not_write_me" not in data
        assert not data.startswith(b"\x80") and not data.startswith(b"PK")  # no pickle / zip
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "bridge.0.weight" in list(f.keys())
    with pytest.raises(CxrError, match="not a"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "config.json").write_text("{}")
        ReportModel.from_pretrained(tmp_path / "x")


# --- pretrained parts from local folders (the hub path, without a download) -------------


def _pretrained_folders(tmp_path):
    torch.manual_seed(0)
    enc_dir, dec_dir = tmp_path / "dinov3", tmp_path / "gpt2"
    DINOv3ViTModel(DINOv3ViTConfig(**ENCODER, image_size=64, patch_size=16)).save_pretrained(
        enc_dir
    )
    tokenizer = ReportTokenizer.train(TEXTS, vocab_size=300)
    from transformers import PreTrainedTokenizerFast

    eot = "<|eos|>"
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tokenizer, eos_token=eot, bos_token=eot)
    hf.save_pretrained(dec_dir)
    gpt2 = GPT2LMHeadModel(GPT2Config(**DECODER, vocab_size=len(tokenizer), n_positions=20))
    gpt2.save_pretrained(dec_dir)
    return enc_dir, dec_dir, gpt2


def test_pretrained_parts_load_from_folders_with_the_token_from_the_environment(
    tmp_path, monkeypatch
):
    enc_dir, dec_dir, gpt2 = _pretrained_folders(tmp_path)
    seen = []
    for cls in (DINOv3ViTModel, GPT2LMHeadModel):
        original = cls.from_pretrained.__func__

        def spy(klass, source, *args, _original=original, **kwargs):
            seen.append(kwargs.get("token"))
            return _original(klass, source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    cfg = small_config("soft", encoder=str(enc_dir), decoder=str(dec_dir))
    model = ReportModel.from_config(cfg)
    assert seen == ["hf_from_env", "hf_from_env"]
    tok = model.tokenizer
    assert tok.bos_id == tok.eos_id == tok.pad_id == tok.tokenizer.token_to_id("<|eos|>")
    # GPT-2's 20 positions tiled to 16 patches + 24 text tokens
    wpe = model.decoder.transformer.wpe.weight
    assert wpe.shape[0] == 40 and model.decoder.config.n_positions == 40
    assert torch.equal(wpe[20:40], gpt2.transformer.wpe.weight[:20])
    assert torch.equal(
        model.decoder.transformer.h[0].attn.c_attn.weight, gpt2.transformer.h[0].attn.c_attn.weight
    )
    out = model(**batch_inputs(model.double()), priors=random_priors(model))
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "saved")  # needs no hub to load again
    monkeypatch.delenv("HF_TOKEN")
    assert ReportModel.from_pretrained(tmp_path / "saved").tokenizer.eos_id == tok.eos_id


# --- configs --------------------------------------------------------------------------


def test_config_json_round_trip(tmp_path):
    for cfg in (ModelConfig.tiny("strict"), ModelConfig.published("soft"), small_config()):
        cfg.to_json(tmp_path / "c.json")
        assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(CxrError, match="unknown"):
        ModelConfig.from_dict({"mode": "soft", "moed": "x"})


def test_presets():
    pub = ModelConfig.published("strict")
    assert pub.encoder == "facebook/dinov3-vits16-pretrain-lvd1689m" and pub.decoder == "gpt2"
    assert (pub.image_size, pub.num_patches, pub.num_positions) == (512, 1024, 2048)
    assert (pub.mode, pub.repetition_penalty, pub.max_new_tokens) == ("strict", 1.2, 150)
    offline = ModelConfig.published(pretrained=False)
    assert offline.encoder["num_register_tokens"] == 4 and offline.decoder["n_layer"] == 12
    assert ModelConfig.tiny("none").mode == "none"


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "hard"},
        {"attn_implementation": "flash"},
        {"image_size": 100},
        {"prior_strength": -1.0},
        {"encoder_trainable": "last_n"},
        {"encoder_trainable": "some"},
        {"max_text_tokens": 1},
    ],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(CxrError, match="ModelConfig"):
        small_config(**changes)
