"""`cxr manifest ...` and `cxr masks chexmask`: exit codes, one-line errors, privacy."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from cxrlib.cli import main
from tests.data.test_chexmask import COLUMNS_MIMIC, _chexmask_row
from tests.data.test_iu_xray import IU, METADATA, METADATA_COLUMNS, build_reports_tgz
from tests.data.test_mimic import build_mimic_tree, write_csv_gz
from tests.data.test_wingspan import WINGSPAN, build_wingspan

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cxr: error: ")
    return err[0]


@pytest.fixture
def mimic_root(tmp_path):
    return build_mimic_tree(tmp_path / "mimic")


def test_mimic_ok_prints_summary(mimic_root, tmp_path, capsys):
    out = tmp_path / "out" / "manifest.csv"
    assert main(["manifest", "mimic-cxr", "--root", str(mimic_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mimic-cxr: kept 2 image(s), dropped 8" in printed
    assert "dropped no_findings: 2" in printed
    summary = json.loads((tmp_path / "out" / "manifest.csv.summary.json").read_text())
    assert summary["kept"] == 2 and summary["dropped_total"] == 8


def test_mimic_malformed_row_exit_1_one_line(mimic_root, tmp_path, capsys):
    meta = mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    lines = gzip.decompress(meta.read_bytes()).decode().splitlines(keepends=True)
    lines[2] = "only,three,fields\r\n"
    meta.write_bytes(gzip.compress("".join(lines).encode()))
    code = main(
        ["manifest", "mimic-cxr", "--root", str(mimic_root), "--out", str(tmp_path / "m.csv")]
    )
    assert code == 1
    line = _one_line_error(capsys)
    assert "mimic-cxr-2.0.0-metadata.csv.gz:3: malformed row: 3 fields, header has 12" in line


def test_missing_root_and_missing_file(tmp_path, capsys):
    assert (
        main(
            [
                "manifest",
                "mimic-cxr",
                "--root",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        == 1
    )
    assert "MIMIC-CXR-JPG folder does not exist" in _one_line_error(capsys)
    assert (
        main(
            ["manifest", "chexpert-plus", "--root", str(tmp_path), "--out", str(tmp_path / "m.csv")]
        )
        == 1
    )
    assert "df_chexpert_plus_240401.csv: file does not exist" in _one_line_error(capsys)


def test_privacy_refusal_inside_this_repository(mimic_root, capsys):
    out = REPO / "runs" / "test-privacy-never-written" / "manifest.csv"
    assert main(["manifest", "mimic-cxr", "--root", str(mimic_root), "--out", str(out)]) == 1
    line = _one_line_error(capsys)
    assert "refusing to write a mimic-cxr manifest inside the git work tree" in line
    assert "--allow-in-repo" in line
    assert not out.parent.exists()


def test_privacy_allow_in_repo(mimic_root, tmp_path, capsys):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    out = tmp_path / "repo" / "runs" / "manifest.csv"
    args = ["manifest", "mimic-cxr", "--root", str(mimic_root), "--out", str(out)]
    assert main(args) == 1
    _one_line_error(capsys)
    assert main([*args, "--allow-in-repo"]) == 0
    assert out.is_file()


def test_default_out_under_xdg_cache(mimic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["manifest", "mimic-cxr", "--root", str(mimic_root)]) == 0
    assert (tmp_path / "xdg" / "cxrlib" / "manifests" / "mimic-cxr" / "manifest.csv").is_file()


def test_iu_xray_text_only_and_bad_xml(tmp_path, capsys):
    tgz = build_reports_tgz(tmp_path / "iu" / "NLMCXR_reports.tgz")
    out = tmp_path / "out" / "manifest.csv"
    assert main(["manifest", "iu-xray", "--reports", str(tgz), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iu-xray: kept 4 report(s), dropped 0" in printed and "empty_findings: 1" in printed
    broken = build_reports_tgz(tmp_path / "bad" / "NLMCXR_reports.tgz", {5: "<eCitation><uId"})
    assert main(["manifest", "iu-xray", "--reports", str(broken), "--out", str(out)]) == 1
    assert "ecgen-radiology/5.xml:1: malformed XML" in _one_line_error(capsys)


def test_iu_xray_with_images_needs_metadata(tmp_path, capsys):
    tgz = build_reports_tgz(tmp_path / "iu" / "NLMCXR_reports.tgz")
    (tmp_path / "png").mkdir()
    args = ["manifest", "iu-xray", "--reports", str(tgz), "--images", str(tmp_path / "png")]
    assert main([*args, "--out", str(tmp_path / "m.csv")]) == 1
    assert "nlmcxr_dicom_metadata.csv.gz: file does not exist" in _one_line_error(capsys)
    write_csv_gz(tmp_path / "meta.csv.gz", METADATA_COLUMNS, METADATA)
    assert (
        main([*args, "--metadata", str(tmp_path / "meta.csv.gz"), "--out", str(tmp_path / "m.csv")])
        == 1
    )
    assert "no rows left to write" in _one_line_error(capsys)  # no image files at all


def test_wingspan_and_folder(tmp_path, capsys):
    root = build_wingspan(tmp_path / "wingspan")
    out = tmp_path / "ws" / "manifest.csv"
    assert (
        main(["manifest", "wingspan", "--root", str(root), "--out", str(out), "--seed", "2"]) == 0
    )
    assert "wingspan: kept 2 image(s), dropped 3" in capsys.readouterr().out
    assert (
        main(
            ["manifest", "folder", "--images", str(root / "png"), "--out", str(tmp_path / "f.csv")]
        )
        == 0
    )
    assert "folder: kept 4 image(s), dropped 1" in capsys.readouterr().out


def test_argument_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["manifest", "chexpert-plus", "--root", str(tmp_path), "--val-fraction", "1.5"])
    assert code.value.code == 2
    with pytest.raises(SystemExit) as code:
        main(["manifest", "wingspan", "--root", str(tmp_path)])  # --out required
    assert code.value.code == 2


def test_masks_chexmask_cli(mimic_root, tmp_path, capsys):
    manifest = tmp_path / "m" / "manifest.csv"
    assert main(["manifest", "mimic-cxr", "--root", str(mimic_root), "--out", str(manifest)]) == 0
    csv_path = tmp_path / "MIMIC-CXR-JPG.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS_MIMIC)
        writer.writerow(_chexmask_row("aaaa1111-0001", 0.95))
    args = ["masks", "chexmask", "--csv", str(csv_path), "--manifest", str(manifest)]
    assert main([*args, "--out", str(tmp_path / "cm"), "--min-dice", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "masks_attached: 1" in printed and "no_chexmask_row: 1" in printed
    manifest.write_text(manifest.read_text().replace(",train,", ",fold1,", 1))
    assert main([*args, "--out", str(tmp_path / "cm2")]) == 1
    assert "invalid --manifest:" in _one_line_error(capsys)


@pytest.mark.shared_data
@pytest.mark.skipif(not (IU / "NLMCXR_reports.tgz").is_file(), reason=f"no IU X-ray at {IU}")
def test_done_when_iu_xray(tmp_path, capsys):
    out = tmp_path / "iu" / "manifest.csv"
    tgz = IU / "NLMCXR_reports.tgz"
    assert main(["manifest", "iu-xray", "--reports", str(tgz), "--out", str(out)]) == 0
    assert "iu-xray: kept 3955 report(s), dropped 0" in capsys.readouterr().out


@pytest.mark.shared_data
@pytest.mark.skipif(not (WINGSPAN / "png").is_dir(), reason=f"no Wingspan at {WINGSPAN}")
def test_done_when_wingspan(tmp_path, capsys):
    out = tmp_path / "ws" / "manifest.csv"
    assert main(["manifest", "wingspan", "--root", str(WINGSPAN), "--out", str(out)]) == 0
    assert "wingspan: kept 219 image(s), dropped 0" in capsys.readouterr().out
