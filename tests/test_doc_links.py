"""Links in the README, docs/ and the committed reports resolve inside the repository.

Every relative link (and image) names a file that exists in the checkout, and every anchor it names
exists in its target: an explicit `<a id="...">` or a heading's GitHub slug. In particular each
report section's link to its claim, `../../docs/derivation.md#claim-ID`, lands on an anchor of
docs/derivation.md, and the committed report links every claim the suite judges."""

from __future__ import annotations

import re
from pathlib import Path

from geomix_cli.checks import claim_ids

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^()\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CLAIM_LINK = re.compile(r"derivation\.md#claim-(?!ID\b)([A-Za-z0-9_-]+)")  # claim-ID: placeholder


def _markdown_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "outputs").rglob("*.md")), *sorted((REPO / "cases").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (letters, digits,
    '_', '-' and spaces kept), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    found = set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_slug_follows_github():
    assert _slug("`theorem1-pareto` — the Pareto front is the geometric family") == \
        "theorem1-pareto--the-pareto-front-is-the-geometric-family"
    assert _slug("The table without `--json`") == "the-table-without---json"
    assert _slug("The problem (§1.1–§1.2)") == "the-problem-1112"


def _broken_links(files: list[Path], root: Path) -> tuple[list[str], int]:
    """(what is broken, how many links were checked) for the relative links of `files`."""
    bad, checked = [], 0
    for md in files:
        for target in LINK.findall(FENCE.sub("", md.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            checked += 1
            where = f"{md.relative_to(root)} -> {target}"
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            if target.startswith("/") or root not in dest.parents:
                bad.append(f"{where}: outside the repository")
            elif not dest.exists():
                bad.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{where}: no anchor '{anchor}'")
    return bad, checked


def test_every_relative_link_and_anchor_resolves():
    bad, checked = _broken_links(_markdown_files(), REPO)
    assert not bad, "\n".join(bad)
    assert checked > 100  # the scan found the links (README, docs, the report's sections)


def test_the_link_check_rejects_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n")
    page = tmp_path / "docs" / "b.md"
    page.write_text("[ok](a.md#a-title) [no file](c.md) [no anchor](a.md#b) [here](#nowhere) "
                    "[out](../../outside.md) ![img](missing.png)\n```\n[in code](x.md)\n```\n")
    bad, checked = _broken_links([page], tmp_path)
    assert checked == 6
    assert [b.split(": ")[-1] for b in bad] == [
        "no such file", "no anchor 'b'", "no anchor 'nowhere'", "outside the repository",
        "no such file"]


def test_every_claim_link_lands_on_an_anchor_of_the_derivation_page():
    anchors = _anchors(REPO / "docs" / "derivation.md")
    linked = {}
    for md in _markdown_files():
        for claim in CLAIM_LINK.findall(md.read_text()):
            linked.setdefault(claim, []).append(str(md.relative_to(REPO)))
    missing = {c: files for c, files in linked.items() if f"claim-{c}" not in anchors}
    assert not missing, missing
    report = (REPO / "outputs" / "verify_alpha_theory" / "report.md").read_text()
    assert set(CLAIM_LINK.findall(report)) == set(claim_ids())  # one link per judged claim
