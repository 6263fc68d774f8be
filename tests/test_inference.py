"""cxr report: Findings, labels and an attention PNG for any radiograph, on a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cxrlib
from cxrlib.anatomy.priors import masks_to_priors
from cxrlib.anatomy.segmenter import Segmenter, SegmenterConfig
from cxrlib.base.errors import CxrError
from cxrlib.base.images import to_pixels
from cxrlib.base.masks import load_mask
from cxrlib.cli import main
from cxrlib.experiment.inference import (
    MASK_STRUCTURES,
    Reporter,
    expand_inputs,
    read_radiograph,
    report_images,
)
from cxrlib.training.generate import load_run
from cxrlib.training.inputs import resolve_manifest
from tests import trained_smoke_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, config = trained_smoke_run(tmp_path_factory)
    manifest = resolve_manifest(config)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    images = [manifest.parent / p for p in df[df["split"] == "test"]["image_path"][:2]]
    return out, manifest.parent, images


def _direct(run_dir, image, masks):
    """What the model itself says for the image under the priors of ``masks``."""
    config, model, _ = load_run(run_dir)
    prior_config = config.priors.resolve(
        model.config.image_size, model.config.patch_size, model.num_decoder_layers
    )
    gray = read_radiograph(image)
    priors = None if masks is None else masks_to_priors(masks, prior_config)
    with torch.no_grad():
        pixels = to_pixels(gray, model.config.image_size)[None]
        return model.generate(pixel_values=pixels, priors=priors)[0].strip()


def test_masks_folder_gives_the_models_findings_labels_and_a_png(run, tmp_path):
    run_dir, root, images = run
    summary = report_images(images, run_dir, tmp_path, masks=root / "masks", progress=False)
    assert not summary.failures and len(summary.reports) == 2
    lines = (tmp_path / "reports.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["image"] for r in records] == [str(p) for p in images]
    masks = {
        name: load_mask(root / "masks" / name / f"{images[0].stem}.png").astype(bool)[None]
        for name in MASK_STRUCTURES
    }
    assert records[0]["findings"] == _direct(run_dir, images[0], masks)
    assert records[0]["masks"] == f"masks {root / 'masks'}"
    assert len(records[0]["labels"]) == 14
    assert set(records[0]["labels"].values()) <= {"positive", "negative", "uncertain", None}
    for r in records:
        if r["findings"]:
            png = Image.open(r["attention_png"])
            assert png.format == "PNG" and png.size[0] > 100


def test_no_masks_is_the_uniform_prior_and_says_so(run, tmp_path):
    run_dir, _, images = run
    summary = report_images(images[:1], run_dir, tmp_path, masks="none", progress=False)
    report = summary.reports[0]
    assert report.masks == "none (uniform prior)"
    assert report.findings == _direct(run_dir, images[0], None)


def test_a_segmenter_folder_is_used_and_named(run, tmp_path):
    run_dir, _, images = run
    seg = Segmenter(SegmenterConfig(image_size=32, base_channels=2, depth=2))
    folder = seg.save_pretrained(tmp_path / "seg")
    summary = report_images(images[:1], run_dir, tmp_path / "out", segmenter=folder, progress=False)
    assert summary.reports[0].masks == f"segmenter {folder}"
    # the segmenter's own masks give the same text as the model called with them
    masks = seg.predict(read_radiograph(images[0])[None])
    assert summary.reports[0].findings == _direct(run_dir, images[0], masks)


def test_a_run_without_segmenter_needs_one_or_masks(run):
    run_dir, _, _ = run
    with pytest.raises(CxrError, match="no segmenter; give --segmenter DIR, --masks DIR"):
        Reporter(run_dir)


def test_bad_files_fail_one_by_one_with_a_line_each(run, tmp_path, capsys):
    run_dir, root, images = run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("not an image")
    data = images[0].read_bytes()
    (bad / "cut.png").write_bytes(data[: len(data) // 3])
    # a mask of the wrong size for the second image
    masks = tmp_path / "masks"
    for name in MASK_STRUCTURES:
        (masks / name).mkdir(parents=True)
        for image in images:
            mask = Image.open(root / "masks" / name / f"{image.stem}.png")
            if image == images[1]:
                mask = mask.resize((mask.width // 2, mask.height // 2))
            mask.save(masks / name / f"{image.stem}.png")
    missing = tmp_path / "missing.png"
    args = [str(images[0]), str(images[1]), str(missing), str(bad / "*.png")]
    code = main(
        ["report", *args, "--run", str(run_dir), "--out", str(tmp_path / "out")]
        + ["--masks", str(masks), "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 1
    failed = [line for line in captured.err.splitlines() if line.startswith("cxr: failed: ")]
    assert len(failed) == 5, captured.err
    assert f"cxr: failed: {missing}: file does not exist" in failed
    assert f"cxr: failed: {bad / 'empty.png'}: empty file" in failed
    assert any(str(bad / "notes.png") in line and "not a readable image" in line for line in failed)
    assert any(str(bad / "cut.png") in line for line in failed)
    assert any(f"{images[1].stem}.png: mask of size" in line for line in failed)
    assert "Traceback" not in captured.err
    assert "1 reported, 5 failed" in captured.out
    records = (tmp_path / "out" / "reports.jsonl").read_text().splitlines()
    assert [json.loads(r)["image"] for r in records] == [str(images[0])]


def test_grayscale_rgb_and_16_bit_images_read_alike(tmp_path):
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")
    for name in ("g.png", "rgb.png", "16.png"):
        image = read_radiograph(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (48, 64)
        assert np.abs(image.astype(int) - gray).max() <= 1, name


def test_dicom_without_pydicom_says_how_to_read_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name.startswith("pydicom"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    with pytest.raises(CxrError, match=r"x.dcm: a DICOM file; install pydicom"):
        read_radiograph(path)


def test_dicom_windowing_and_monochrome1(tmp_path):
    import pydicom  # the dev extra installs it (cxr report's dicom extra for users)
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    for kind in ("MONOCHROME2", "MONOCHROME1"):
        ds = FileDataset(str(tmp_path / f"{kind}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = kind
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / f"{kind}.dcm", enforce_file_format=True)
    two = read_radiograph(tmp_path / "MONOCHROME2.dcm")
    one = read_radiograph(tmp_path / "MONOCHROME1.dcm")
    assert two[0, 0] == 0 and two[-1, -1] == 255
    assert np.array_equal(one, 255 - two)
    del pydicom


def test_folders_and_globs_expand_sorted(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([tmp_path]) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "*.png")]) == [tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "*.gif")]) == [tmp_path / "*.gif"]


def test_report_image_is_one_image_of_report_images(run, tmp_path):
    run_dir, _, images = run
    one = cxrlib.report_image(images[0], run_dir, masks="none", out=tmp_path)
    many = report_images(images[:1], run_dir, tmp_path / "many", masks="none", progress=False)
    assert one.findings == many.reports[0].findings
    assert one.labels == many.reports[0].labels
    assert one.attention_png == str(tmp_path / f"{images[0].stem}_attention.png")
