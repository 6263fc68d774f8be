"""Hub failures end in one line naming the model and the fixes, within seconds."""

import os
import subprocess
import sys

import httpx2
import pytest
from huggingface_hub import constants, get_hf_file_metadata
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from transformers import GPT2Config

from cxrlib.base.errors import CxrError
from cxrlib.data.phantom import write_phantom
from cxrlib.model import hub
from cxrlib.model.config import ModelConfig
from cxrlib.model.hub import load_from_hub, random_fields
from cxrlib.training.config import load_config, parse_assignment

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
DINO = "facebook/dinov3-vits16-pretrain-lvd1689m"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(hub, "_PROBED", {})
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _http_error(cls, url: str, status: int):
    response = httpx2.Response(status, request=httpx2.Request("HEAD", url))
    return cls(f"{status} Client Error for url: {url}", response=response)


def _fixes(message: str, part: str, model_id: str) -> None:
    assert "\n" not in message
    assert repr(model_id) in message and "HF_TOKEN" in message
    assert f"--set model.{part}=DIR" in message
    assert f"--set 'model.{part}={random_fields(part)}'" in message


def test_train_without_the_hub_fails_in_one_line_within_seconds(tmp_path):
    """The new user's first try: the full profile on a machine that cannot reach the hub."""
    write_phantom(tmp_path / "ph", n=6, seed=0, size=64, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=CLOSED, HF_HOME=str(tmp_path / "hf"))  # an empty cache
    manifest = tmp_path / "ph" / "manifest.csv"
    command = [sys.executable, "-m", "cxrlib.cli", "train", "--profile", "full"]
    command += ["--set", f"data.manifest={manifest}", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxr: error: "), done.stderr[-2000:]
    assert "'gpt2'" in lines[0] and "HF_TOKEN" in lines[0] and CLOSED in lines[0]


def test_a_closed_endpoint_is_one_cxr_error_without_retries(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    # one request to the hub, not transformers' minute of retries (measured: 54 s before,
    # 5-9 s for the whole `cxr train` now, the process's start included)
    requests = []

    def once(*args, **kwargs):
        requests.append(args[0])
        return get_hf_file_metadata(*args, **kwargs)

    monkeypatch.setattr(hub, "get_hf_file_metadata", once)
    with pytest.raises(CxrError) as err:
        load_from_hub("decoder", "gpt2", GPT2Config.from_pretrained, cache_dir=tmp_path)
    assert len(requests) == 1
    _fixes(str(err.value), "decoder", "gpt2")
    assert "cannot be reached" in str(err.value) and "connect to the hub" in str(err.value)


def test_the_hub_is_asked_once_per_model(monkeypatch):
    asked = []
    monkeypatch.setattr(hub, "_ask_hub", lambda model_id, token: asked.append(model_id))
    for _ in range(3):
        assert load_from_hub("decoder", "gpt2", lambda source, **kw: (source, kw)) == (
            "gpt2",
            {"token": None},
        )
    assert asked == ["gpt2"]


@pytest.mark.parametrize("token", [None, "hf_secret_never_shown"])
def test_a_gated_model_names_the_token_and_the_access_page(monkeypatch, token):
    """Gated as transformers raises it (an OSError from GatedRepoError), the token never shown."""
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    url = f"https://huggingface.co/{DINO}/resolve/main/config.json"
    monkeypatch.setattr(hub, "_ask_hub", lambda model_id, token: None)

    def loader(source, **kwargs):
        assert kwargs["token"] == token
        try:
            raise _http_error(GatedRepoError, url, 401)
        except GatedRepoError as cause:
            raise OSError(f"You are trying to access a gated repo {source}") from cause

    with pytest.raises(CxrError) as err:
        load_from_hub("encoder", DINO, loader)
    message = str(err.value)
    _fixes(message, "encoder", DINO)
    assert "gated" in message and f"{constants.ENDPOINT}/{DINO}" in message
    assert ("has no access" if token else "HF_TOKEN is not set") in message
    assert "hf_secret" not in message


def test_a_refusal_of_the_hub_falls_back_to_the_cache_then_says_why(monkeypatch):
    url = "https://huggingface.co/no-such/model/resolve/main/config.json"
    refusal = _http_error(RepositoryNotFoundError, url, 404)
    monkeypatch.setattr(hub, "_ask_hub", lambda model_id, token: refusal)
    calls = []

    def cached_only(source, **kwargs):
        calls.append(kwargs)
        raise OSError(f"{source} is not in the cache")

    with pytest.raises(CxrError) as err:
        load_from_hub("decoder", "no-such/model", cached_only)
    assert calls == [{"token": None, "local_files_only": True}]
    _fixes(str(err.value), "decoder", "no-such/model")
    assert "not on the hub (a wrong id" in str(err.value)
    assert not hub._PROBED  # a failed load asks the hub again next time
    # a cached copy is used when the hub refuses or cannot be reached
    assert load_from_hub("decoder", "no-such/model", lambda s, **kw: kw["local_files_only"])


def test_offline_mode_and_a_missing_folder_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    with pytest.raises(CxrError, match="HF_HUB_OFFLINE is set"):
        load_from_hub(
            "encoder",
            DINO,
            lambda source, **kw: GPT2Config.from_pretrained(source, cache_dir=tmp_path, **kw),
        )
    with pytest.raises(CxrError, match="no such folder"):
        load_from_hub("decoder", str(tmp_path / "no" / "gpt2"), GPT2Config.from_pretrained)
    GPT2Config(n_layer=2).save_pretrained(tmp_path / "gpt2")  # a folder loads as it is
    assert load_from_hub("decoder", tmp_path / "gpt2", GPT2Config.from_pretrained).n_layer == 2


def test_the_rehearsal_set_is_the_published_sizes_with_random_weights():
    overrides = [parse_assignment(f"model.{p}={random_fields(p)}") for p in hub.PARTS]
    model = load_config("full", overrides=overrides).model
    published = ModelConfig.published(pretrained=False)
    assert (model.encoder, model.decoder) == (published.encoder, published.decoder)
