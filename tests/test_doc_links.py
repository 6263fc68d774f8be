"""The documentation's relative links: every one reaches a file, and every anchor a heading.

``tests/test_architecture.py`` keeps links inside the repository; this adds the anchors
(``page.md#heading``, GitHub's heading ids) and that the README, the front door, links
each page under ``docs/`` exactly once.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]*)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a link there is an example)."""
    return FENCE.sub("", text)


def _anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of ``path``: lower case, punctuation dropped,
    spaces as hyphens, a repeated id numbered; and explicit ``id=`` / ``name=`` anchors."""
    text = _prose(path.read_text())
    ids, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    ids.update(re.findall(r"""(?:id|name)=["']([^"']+)["']""", text))
    return ids


def test_the_anchor_rule_matches_github(tmp_path):
    page = "# The `cxr` command\n## Results (default profile, measured)\n## A: b\n## A: b\n"
    path = tmp_path / "anchors.md"
    path.write_text(page + "```\n# not a heading\n```\n")
    assert _anchors(path) == {"the-cxr-command", "results-default-profile-measured", "a-b", "a-b-1"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_reaches_a_file_and_its_anchor(doc):
    path = ROOT / doc
    bad = []
    for target in LINK.findall(_prose(path.read_text())):
        if not target or re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            bad.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not bad, f"{doc}: {bad}"


def test_the_readme_links_each_docs_page_once():
    links = [t.partition("#")[0] for t in LINK.findall(_prose((ROOT / "README.md").read_text()))]
    counts = {doc: links.count(doc) for doc in DOCS if doc.startswith("docs/")}
    assert counts == dict.fromkeys(counts, 1), {doc: n for doc, n in counts.items() if n != 1}
