"""Images anywhere: manifest image and mask cells as fsspec URLs, read through fsspec's
in-memory filesystem (``memory://``) exactly as from disk."""

import dataclasses
import importlib.util
import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlib.anatomy.cache import cached_priors_for_manifest, mask_fingerprints
from cxrlib.anatomy.manifest_priors import priors_for_manifest
from cxrlib.anatomy.prior_config import PriorConfig
from cxrlib.base import storage
from cxrlib.base.errors import CxrError, ManifestError
from cxrlib.base.images import load_image, load_pixels
from cxrlib.base.masks import load_mask, read_finding_mask
from cxrlib.cli import main
from cxrlib.data.chexmask import attach_masks
from cxrlib.data.dataset import Example
from cxrlib.data.manifest import CHEXPERT_LABELS, read_manifest, resolve
from cxrlib.model import ReportModel
from cxrlib.training.inputs import load_splits, resolve_manifest, split_dataset, unreadable_images
from cxrlib.training.runs import run_inputs
from tests import smoke_config

MASKS = ("left_lung", "right_lung", "heart")
CONFIG = PriorConfig(image_size=64, patch_size=8)  # 8x8 grid


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _files(i: int) -> dict[str, bytes]:
    """One study's image (with a 16-bit finding mask) and organ masks, as PNG bytes."""
    rng = np.random.default_rng(i)
    h, w = 40 + 4 * i, 48
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    boxes = {"left_lung": (5, 30, 28, 44), "right_lung": (5, 30, 4, 20), "heart": (18, 34, 16, 32)}
    out = {f"images/i{i}.png": _png(image)}
    for organ, (r0, r1, c0, c1) in boxes.items():
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[r0 + i : r1 + i, c0:c1] = 255
        out[f"masks/{organ}/i{i}.png"] = _png(mask)
    bits = np.zeros((h, w), dtype=np.uint16)
    bits[10:20, 30:40] = 1 << 10  # Pleural Effusion
    out[f"masks/finding/i{i}.png"] = _png(bits)
    return out


def _rows(prefix: str) -> list[dict]:
    rows = []
    for i in range(3):
        row = {
            "study_id": f"s{i}",
            "image_id": f"i{i}",
            "image_path": f"{prefix}images/i{i}.png",
            "view": "PA",
            "split": "train",
            "findings": "No pneumothorax.",
            **{label: "" for label in CHEXPERT_LABELS},
        }
        for organ in MASKS:
            row[f"{organ}_mask_path"] = f"{prefix}masks/{organ}/i{i}.png"
        row["finding_mask_path"] = f"{prefix}masks/finding/i{i}.png"
        rows.append(row)
    return rows


def _csv(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


@pytest.fixture
def stores(tmp_path):
    """The same files on disk (``tmp_path/disk``) and in memory (``memory://<id>/data``),
    with a manifest of relative cells in each place and a local one naming URLs."""
    fs = fsspec.filesystem("memory")
    bucket = f"memory://cxr-{uuid.uuid4().hex}"
    disk = tmp_path / "disk"
    for i in range(3):
        for name, data in _files(i).items():
            (disk / name).parent.mkdir(parents=True, exist_ok=True)
            (disk / name).write_bytes(data)
            fs.pipe(f"{bucket}/data/{name}", data)
    (disk / "manifest.csv").write_bytes(_csv(_rows("")))
    fs.pipe(f"{bucket}/data/manifest.csv", _csv(_rows("")))
    (tmp_path / "urls.csv").write_bytes(_csv(_rows(f"{bucket}/data/")))
    yield {"disk": disk, "bucket": bucket, "fs": fs, "tmp": tmp_path}
    fs.rm(bucket, recursive=True)


def test_url_cells_and_a_url_manifest_validate_and_resolve(stores):
    bucket = stores["bucket"]
    urls = read_manifest(stores["tmp"] / "urls.csv")
    assert urls.resolve(urls.frame["image_path"].iloc[0]) == f"{bucket}/data/images/i0.png"
    remote = read_manifest(f"{bucket}/data/manifest.csv")
    assert remote.root == f"{bucket}/data"
    assert remote.resolve("images/i1.png") == f"{bucket}/data/images/i1.png"
    assert remote.resolve("../other/x.png") == f"{bucket}/other/x.png"
    local = read_manifest(stores["disk"] / "manifest.csv")
    assert local.resolve("images/i1.png") == stores["disk"] / "images" / "i1.png"  # a Path
    assert resolve(Path("/data"), "gs://b/x.png") == "gs://b/x.png"
    pd.testing.assert_frame_equal(remote.frame, local.frame)


def test_images_and_masks_read_the_same_pixels_as_from_disk(stores):
    disk, base = stores["disk"], f"{stores['bucket']}/data"
    for i in range(3):
        image = f"images/i{i}.png"
        np.testing.assert_array_equal(load_image(f"{base}/{image}"), load_image(disk / image))
        assert torch.equal(load_pixels(f"{base}/{image}", 32), load_pixels(disk / image, 32))
        for organ in MASKS:
            name = f"masks/{organ}/i{i}.png"
            np.testing.assert_array_equal(load_mask(f"{base}/{name}"), load_mask(disk / name))
        name = f"masks/finding/i{i}.png"
        np.testing.assert_array_equal(
            read_finding_mask(f"{base}/{name}"), read_finding_mask(str(disk / name))
        )


@pytest.mark.parametrize("where", ["urls", "remote"])
def test_priors_of_url_rows_equal_those_of_the_files_on_disk(stores, where, tmp_path):
    local = read_manifest(stores["disk"] / "manifest.csv")
    if where == "urls":
        manifest = read_manifest(stores["tmp"] / "urls.csv")
    else:
        manifest = read_manifest(f"{stores['bucket']}/data/manifest.csv")
    ids, priors, info = priors_for_manifest(manifest, CONFIG, progress=False)
    ids0, priors0, info0 = priors_for_manifest(local, CONFIG, progress=False)
    assert ids == ids0 and info.sources == ["manifest"] * 3
    assert torch.equal(priors, priors0)
    cached = cached_priors_for_manifest(manifest, CONFIG, tmp_path / "cache", progress=False)
    assert torch.equal(cached.priors.tensor(), priors0)
    again = cached_priors_for_manifest(manifest, CONFIG, tmp_path / "cache", progress=False)
    assert again.reused == 3


def test_a_replaced_mask_object_changes_the_prior_fingerprint(stores):
    manifest = read_manifest(stores["tmp"] / "urls.csv")
    _, before = mask_fingerprints(manifest, CONFIG)
    url = manifest.frame["heart_mask_path"].iloc[1]
    stores["fs"].pipe(url, _files(0)["masks/heart/i0.png"] + b"")  # same path, new object
    _, after = mask_fingerprints(manifest, CONFIG)
    assert before[0] == after[0] and before[2] == after[2] and before[1] != after[1]


def test_header_check_of_url_images(stores):
    base = f"{stores['bucket']}/data"
    stores["fs"].pipe(f"{base}/images/bad.png", b"not a png")
    examples = [
        Example("i0", "t", f"{base}/images/i0.png"),
        Example("gone", "t", f"{base}/images/gone.png"),
        Example("bad", "t", f"{base}/images/bad.png"),
    ]
    bad = unreadable_images(examples)
    assert sorted(bad) == ["bad", "gone"]
    assert bad["gone"] == f"{base}/images/gone.png: image file does not exist"


def _problems(path) -> list[str]:
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    return err.value.problems


def test_a_missing_object_is_one_line_naming_the_row(stores):
    rows = _rows(f"{stores['bucket']}/data/")
    rows[1]["image_path"] = f"{stores['bucket']}/data/images/missing.png"
    rows[2]["heart_mask_path"] = "masks/heart/i2.png"  # relative to a local manifest: absent
    path = stores["tmp"] / "bad.csv"
    path.write_bytes(_csv(rows))
    assert _problems(path) == [
        f"{path}:3: image_path '{stores['bucket']}/data/images/missing.png' does not exist",
        f"{path}:4: heart_mask_path 'masks/heart/i2.png' does not exist",
    ]
    with pytest.raises(CxrError, match=r"^memory://.*/missing.png: image file does not exist$"):
        load_image(f"{stores['bucket']}/data/images/missing.png")
    with pytest.raises(CxrError, match=r"^memory://.*/missing.png: mask file does not exist$"):
        load_mask(f"{stores['bucket']}/data/images/missing.png")


def test_an_unknown_protocol_is_one_line_naming_the_row(stores):
    rows = _rows("")
    rows[0]["image_path"] = "nosuchfs://bucket/i0.png"
    path = stores["disk"] / "odd.csv"
    path.write_bytes(_csv(rows))
    assert _problems(path) == [
        f"{path}:2: image_path 'nosuchfs://bucket/i0.png': unknown URL protocol 'nosuchfs' "
        "(fsspec knows none such)"
    ]
    with pytest.raises(CxrError) as err:
        load_image("nosuchfs://bucket/i0.png")
    assert "\n" not in str(err.value) and str(err.value).startswith("nosuchfs://bucket/i0.png: ")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed")
def test_a_missing_back_end_names_the_package_to_install(stores):
    rows = _rows("")
    for row in rows:
        row["image_path"] = f"gs://bucket/{row['image_id']}.png"
    path = stores["disk"] / "gs.csv"
    path.write_bytes(_csv(rows))
    problems = _problems(path)
    assert len(problems) == 3
    assert problems[0] == (
        f"{path}:2: image_path 'gs://bucket/i0.png': gs:// URLs need the gcsfs package "
        "(pip install gcsfs)"
    )
    with pytest.raises(CxrError) as err:
        load_mask("gs://bucket/m.png")
    assert (
        str(err.value) == "gs://bucket/m.png: gs:// URLs need the gcsfs package (pip install gcsfs)"
    )


def test_a_missing_url_manifest_is_one_line(stores):
    url = f"{stores['bucket']}/data/absent.csv"
    assert _problems(url) == [f"{url}: manifest file does not exist"]


def test_what_is_a_url():
    assert storage.is_url("gs://b/x.png") and storage.is_url("file:///tmp/x.png")
    assert storage.is_url("simplecache::s3://b/x.png")
    assert not storage.is_url("C://x.png") and not storage.is_url("images/x.png")
    assert not storage.is_url(Path("/tmp/x.png"))
    assert storage.join("https://host/a/m", "x.png") == "https://host/a/m/x.png"
    assert storage.parent("gs://b/a/m.csv") == "gs://b/a"


def test_file_urls_read_local_files(stores):
    disk = stores["disk"]
    url = (disk / "images" / "i0.png").as_uri()
    assert url.startswith("file://")
    np.testing.assert_array_equal(load_image(url), load_image(disk / "images" / "i0.png"))


def test_a_run_reads_a_manifest_at_a_url(stores, tmp_path):
    """``data.manifest`` as a URL: the splits, the dataset's pixels and priors are those
    of the same files on disk."""
    url = f"{stores['bucket']}/data/manifest.csv"
    config = smoke_config(tmp_path / "cache")
    config = config.replace(data=dataclasses.replace(config.data, manifest=url))
    assert resolve_manifest(config) == url
    train = load_splits(config, resolve_manifest(config))["train"]
    local = read_manifest(stores["disk"] / "manifest.csv")
    torch.manual_seed(0)
    model = ReportModel.from_config(config.model, texts=["a b c"])
    remote, bad = split_dataset(config, model, train, progress=False)
    apart = dataclasses.replace(config.data, cache_dir=str(tmp_path / "other"))
    on_disk, _ = split_dataset(config.replace(data=apart), model, local, progress=False)
    assert bad == [] and len(remote) == len(on_disk) == 3
    for i in range(3):  # the smoke profile: frozen encoder, cached features, soft priors
        assert torch.equal(remote[i]["image_features"], on_disk[i]["image_features"])
        assert torch.equal(remote[i]["priors"], on_disk[i]["priors"])
    record = run_inputs(config, model.config, model.num_decoder_layers, url)
    assert record["manifest"] == url


def test_chexmask_masks_for_a_manifest_at_a_url(stores, tmp_path):
    """The extended manifest is local: its images stay URLs (relative cells of the URL
    manifest become absolute URLs), its decoded masks are local files."""
    from tests.data.test_chexmask import COLUMNS_MIMIC, _chexmask_row, _write

    url = f"{stores['bucket']}/data/manifest.csv"
    rows = [_chexmask_row(f"i{i}", 0.9, h=40 + 4 * i, w=48) for i in range(3)]
    rows[2] = _chexmask_row("i2", 0.9, h=8, w=8)  # not the image's size: masks kept
    csv_path = _write(tmp_path / "chexmask.csv", COLUMNS_MIMIC, rows)
    attach_masks(csv_path, url, tmp_path / "out")
    out = read_manifest(tmp_path / "out" / "manifest.csv")
    images = out.frame["image_path"].tolist()
    assert images == [f"{stores['bucket']}/data/images/i{i}.png" for i in range(3)]
    hearts = [out.resolve(cell) for cell in out.frame["heart_mask_path"]]
    assert not storage.is_url(hearts[0]) and not storage.is_url(hearts[1])  # decoded here
    assert hearts[2] == f"{stores['bucket']}/data/masks/heart/i2.png"  # kept, now absolute


def test_cxr_priors_reads_a_manifest_at_a_url(stores, tmp_path, capsys):
    url = f"{stores['bucket']}/data/manifest.csv"
    argv = ["priors", "--manifest", url, "--image-size", "64", "--patch-size", "8"]
    assert main([*argv, "--out", str(tmp_path / "remote")]) == 0
    capsys.readouterr()
    local = read_manifest(stores["disk"] / "manifest.csv")
    config = PriorConfig(image_size=64, patch_size=8)
    cached = cached_priors_for_manifest(
        read_manifest(url), config, tmp_path / "remote", progress=False
    )
    assert cached.reused == 3  # what the command cached
    expected = priors_for_manifest(local, config, progress=False)[1]
    assert torch.equal(cached.priors.tensor(), expected)
    assert main(["priors", "--manifest", url + ".gone", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"cxr: error: invalid --manifest: {url}.gone: manifest file does not exist"
    )
