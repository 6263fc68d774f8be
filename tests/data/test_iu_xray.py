"""IU X-ray adapter: Open-i XML reports in the official tgz layout, and the real release."""

import html
import io
import re
import tarfile
import time
from pathlib import Path

import pytest

from cxrlib.base.errors import CxrError
from cxrlib.data import manifest as manifest_module
from cxrlib.data.iu_xray import build_manifest, iter_reports, read_views
from cxrlib.data.manifest import is_text_only, read_manifest, resolve
from tests.data.test_mimic import tiny_image, write_csv_gz

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
IU = SHARED / "iu-xray"
needs_iu = pytest.mark.skipif(
    not (IU / "NLMCXR_reports.tgz").is_file(),
    reason=f"real IU X-ray reports not found at {IU} (../shared/data beside the repo)",
)


def report_xml(n, findings, *, impression="Normal chest.", majors=("normal",), images=None):
    """One report in the Open-i XML structure (invented text)."""
    images = (
        images if images is not None else [f"CXR{n}_IM-00{n:02d}-1001", f"CXR{n}_IM-00{n:02d}-2001"]
    )
    abstract = "".join(
        f'\n            <AbstractText Label="{label}">{text}</AbstractText>'
        if text
        else f'\n            <AbstractText Label="{label}"/>'
        for label, text in (
            ("COMPARISON", "None."),
            ("INDICATION", "XXXX-year-old with cough"),
            ("FINDINGS", findings),
            ("IMPRESSION", impression),
        )
    )
    mesh = "".join(f"\n      <major>{m}</major>" for m in majors)
    parents = "".join(
        f'\n   <parentImage id="{i}">\n      <figureId>F1</figureId>\n'
        f"      <caption>Xray Chest PA and Lateral</caption>\n   </parentImage>"
        for i in images
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>{abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>{mesh}
      <automatic>automatic term</automatic>
   </MeSH>{parents}
</eCitation>"""


REPORTS = {
    1: report_xml(
        1,
        "Heart size normal. No XXXX of effusion &gt; 1 cm. Lungs   clear.",
        majors=("Cardiomegaly/mild", "Opacity/lung/base/left"),
        images=["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    ),
    2: report_xml(2, "", impression="No acute disease."),
    3: report_xml(3, "Stable XXXX XXXX sternotomy wires.\n         No pneumothorax."),
    10: report_xml(
        10,
        "Clear lungs.",
        images=["CXR10_IM-0002-1001", "CXR10_IM-0002-2001", "CXR10_IM-0002-3001"],
    ),
}
# nlmcxr_dicom_metadata.csv.gz: real column names (a few of the 176), invented values
METADATA_COLUMNS = [
    "imageid",
    "Accession Number",
    "Patient ID",
    "Patient Orientation",
    "View Position",
    "filename",
]
METADATA = [
    ["CXR1_IM-0001-3001", "1", "1", "['L', 'F']", "PA", "./1_IM-0001-3001.dcm"],
    ["CXR1_IM-0001-4001", "1", "1", "['A', 'F']", "LL", "./1_IM-0001-4001.dcm"],
    ["CXR2_IM-0002-1001", "2", "2", "", "", "./2_IM-0002-1001.dcm"],
    ["CXR2_IM-0002-2001", "2", "2", "", "AP", "./2_IM-0002-2001.dcm"],
    ["CXR3_IM-0003-1001", "3", "3", "['L', 'F']", "PA", "./3_IM-0003-1001.dcm"],
    ["CXR3_IM-0003-2001", "3", "3", "['L', 'F']", "LATERAL", "./3_IM-0003-2001.dcm"],
    ["CXR10_IM-0002-1001", "10", "10", "['L', 'F']", "PA", "./10_IM-0002-1001.dcm"],
    ["CXR10_IM-0002-2001", "10", "10", "['L', 'F']", "AP", "./10_IM-0002-2001.dcm"],
    ["CXR10_IM-0002-3001", "10", "10", "['L', 'F']", "AP", "./10_IM-0002-3001.dcm"],
]


def build_reports_tgz(path: Path, reports=REPORTS) -> Path:
    """NLMCXR_reports.tgz with ecgen-radiology/<n>.xml members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for n, text in reports.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"ecgen-radiology/{n}.xml")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def iu_dir(tmp_path):
    folder = tmp_path / "iu-xray"
    build_reports_tgz(folder / "NLMCXR_reports.tgz")
    write_csv_gz(folder / "nlmcxr_dicom_metadata.csv.gz", METADATA_COLUMNS, METADATA)
    return folder


def test_text_only_one_row_per_report(iu_dir, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(iu_dir / "NLMCXR_reports.tgz", out)
    df = read_manifest(out).frame
    assert is_text_only(df)
    assert list(df["study_id"]) == ["CXR1", "CXR2", "CXR3", "CXR10"]  # numeric order
    assert list(df["image_id"]) == list(df["study_id"])
    first = df.iloc[0]
    assert first["findings"] == "Heart size normal. No XXXX of effusion > 1 cm. Lungs clear."
    assert first["xxxx_count"] == "1"
    assert first["mesh_major"] == "Cardiomegaly/mild;Opacity/lung/base/left"
    assert first["image_ids"] == "CXR1_1_IM-0001-3001;CXR1_1_IM-0001-4001"
    assert (first["indication"], first["comparison"]) == ("XXXX-year-old with cough", "None.")
    assert df.iloc[1]["findings"] == ""
    assert df.iloc[1]["impression"] == "No acute disease."
    assert df.iloc[2]["findings"] == "Stable XXXX XXXX sternotomy wires. No pneumothorax."
    assert df[list(df.columns[6:20])].isna().all().all()  # labels blank
    assert summary.kept == 4 and summary.dropped_total == 0
    assert summary.counts["empty_findings"] == 1
    assert summary.counts["xxxx_tokens_in_findings"] == 3
    assert summary.counts["reports_with_xxxx_in_findings"] == 2
    assert summary.counts["xxxx_tokens_in_all_sections"] == 3 + 4  # + each INDICATION
    assert (out.parent / "manifest.csv.summary.json").is_file()


def test_drop_empty_findings(iu_dir, tmp_path):
    summary = build_manifest(
        iu_dir / "NLMCXR_reports.tgz", tmp_path / "m.csv", drop_empty_findings=True
    )
    assert read_manifest(tmp_path / "m.csv").frame["study_id"].tolist() == ["CXR1", "CXR3", "CXR10"]
    assert dict(summary.dropped) == {"empty_findings": 1}


def test_xml_folder_instead_of_tgz(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    for n, text in REPORTS.items():
        (folder / f"{n}.xml").write_text(text)
    build_manifest(folder, tmp_path / "m.csv")
    assert len(read_manifest(tmp_path / "m.csv")) == len(REPORTS)


def test_image_mode_frontal_rows(iu_dir, tmp_path):
    images = tmp_path / "NLMCXR_png"
    for ids in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0002-1001"):
        tiny_image(images / f"{ids}.png")
    tiny_image(images / "sub" / "CXR3_IM-0003-1001.png")
    tiny_image(images / "CXR10_IM-0002-1001.png")
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(iu_dir / "NLMCXR_reports.tgz", out, images=images)
    df = read_manifest(out).frame
    assert not is_text_only(df)
    assert df["image_id"].tolist() == [
        "CXR1_1_IM-0001-3001",
        "CXR3_IM-0003-1001",
        "CXR10_IM-0002-1001",
    ]
    assert df["view"].tolist() == ["PA", "PA", "PA"]
    assert df["study_id"].tolist() == ["CXR1", "CXR3", "CXR10"]
    assert resolve(out.parent, df["image_path"].iloc[1]).is_file()
    assert dict(summary.dropped) == {
        "view_not_selected": 3,  # CXR1 LL, CXR2 blank (UNKNOWN), CXR3 LATERAL
        "missing_image": 3,  # CXR2 AP, CXR10 AP twice
    }
    assert summary.counts["reports_with_several_selected_images"] == 0
    assert summary.kept + summary.dropped_total == sum(
        len(re.findall("parentImage id", t)) for t in REPORTS.values()
    )
    # UNKNOWN selects images without a view
    build_manifest(
        iu_dir / "NLMCXR_reports.tgz", tmp_path / "u.csv", images=images, views="UNKNOWN"
    )
    assert read_manifest(tmp_path / "u.csv").frame["image_id"].tolist() == ["CXR2_IM-0002-1001"]


def test_malformed_xml_names_member_and_line(tmp_path):
    broken = dict(REPORTS)
    broken[7] = REPORTS[3].replace("</Abstract>", "</Abstrct>")
    tgz = build_reports_tgz(tmp_path / "NLMCXR_reports.tgz", broken)
    with pytest.raises(
        CxrError, match=r"NLMCXR_reports\.tgz:ecgen-radiology/7\.xml:\d+: malformed XML"
    ):
        build_manifest(tgz, tmp_path / "m.csv")


def test_unreadable_archive(tmp_path):
    bad = tmp_path / "NLMCXR_reports.tgz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CxrError, match="not a readable tar archive"):
        build_manifest(bad, tmp_path / "m.csv")
    with pytest.raises(CxrError, match="does not exist"):
        build_manifest(tmp_path / "absent.tgz", tmp_path / "m.csv")


def test_refused_in_repo_by_license(iu_dir, tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(CxrError, match="CC BY-NC-ND"):
        build_manifest(iu_dir / "NLMCXR_reports.tgz", tmp_path / "repo" / "m.csv")


# --- the real release (../shared/data/iu-xray) -------------------------------------------


def _xml_findings(raw: str) -> str | None:
    """FINDINGS text straight from the XML bytes, independent of the adapter's parser."""
    m = re.search(r'<AbstractText Label="FINDINGS"(?:/>|>(.*?)</AbstractText>)', raw, re.S)
    return None if m is None else html.unescape(m.group(1) or "")


@pytest.mark.shared_data
@needs_iu
def test_real_reports_all_parse_and_findings_equal_xml(tmp_path):
    start = time.perf_counter()
    out = tmp_path / "iu" / "manifest.csv"
    summary = build_manifest(IU / "NLMCXR_reports.tgz", out)
    elapsed = time.perf_counter() - start
    df = read_manifest(out).frame
    assert len(df) == 3955 and df["study_id"].is_unique
    assert summary.kept == 3955 and summary.dropped_total == 0
    assert summary.counts["empty_findings"] == 530
    assert elapsed < 20, f"parsing took {elapsed:.1f} s"
    findings = dict(zip(df["study_id"], df["findings"], strict=True))
    irregular = []
    with tarfile.open(IU / "NLMCXR_reports.tgz") as archive:
        for member in archive:
            m = re.search(r"(\d+)\.xml$", member.name)
            if not m:
                continue
            raw = archive.extractfile(member).read().decode("utf-8")
            xml_text = _xml_findings(raw)
            assert xml_text is not None, member.name
            ours = findings[f"CXR{m.group(1)}"]
            assert ours == " ".join(xml_text.split()), member.name
            if ours != xml_text:
                irregular.append(int(m.group(1)))
    assert sorted(irregular) == [206, 1600]  # the only ones with double spaces
    assert findings["CXR1"].startswith(
        "The cardiac silhouette and mediastinum size are within normal limits."
    )
    assert summary.counts["xxxx_tokens_in_findings"] == df["xxxx_count"].astype(int).sum()
    assert df["findings"].str.count("XXXX").sum() == summary.counts["xxxx_tokens_in_findings"]


@pytest.mark.shared_data
@needs_iu
def test_real_metadata_views_and_image_mode(tmp_path):
    views = read_views(IU / "nlmcxr_dicom_metadata.csv.gz")
    assert len(views) == 7469
    reports = {r.number: r for r in iter_reports(IU / "NLMCXR_reports.tgz")}
    images = tmp_path / "png"
    for n in (1, 4, 10):
        for image_id in reports[n].image_ids:
            tiny_image(images / f"{image_id}.png")
    out = tmp_path / "manifest.csv"
    summary = build_manifest(IU / "NLMCXR_reports.tgz", out, images=images)
    df = read_manifest(out).frame
    # report 1's ids carry "_1_" and are found through the fallback
    assert "CXR1_1_IM-0001-3001" in set(df["image_id"])
    assert set(df["study_id"]) == {"CXR1", "CXR4", "CXR10"}
    assert set(df["view"]) <= {"PA", "AP"}
    assert summary.kept + summary.dropped_total == sum(len(r.image_ids) for r in reports.values())


@pytest.mark.parametrize("with_images", [False, True])
def test_written_in_chunks_same_bytes(iu_dir, tmp_path, monkeypatch, with_images):
    images = None
    if with_images:
        images = tmp_path / "NLMCXR_png"
        for ids in ("CXR1_1_IM-0001-3001", "CXR2_IM-0002-1001", "CXR3_IM-0003-1001"):
            tiny_image(images / f"{ids}.png")
    out = tmp_path / "out"
    build_manifest(iu_dir / "NLMCXR_reports.tgz", out / "whole.csv", images=images)
    monkeypatch.setattr(manifest_module, "CHUNK_ROWS", 1)
    summary = build_manifest(iu_dir / "NLMCXR_reports.tgz", out / "chunked.csv", images=images)
    assert summary.kept >= 2
    assert (out / "chunked.csv").read_bytes() == (out / "whole.csv").read_bytes()
