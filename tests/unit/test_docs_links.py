"""The README is the door and docs/ the manual: every relative link in them leads somewhere
that exists (a file, a directory, or a heading of a Markdown file), and the README stays short
enough to read on one sitting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "RESULTS.md"])
README_MAX_BYTES = 12 * 1024

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without code: a bracket in a code sample is not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    return _LINK.findall(_prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped, spaces
    to hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not a repo path
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if root not in path.parents and path != root:
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path.read_text()):
            where = path.relative_to(root).as_posix()
            problems.append(f"{target}: no heading #{fragment} in {where}")
    return problems


def test_the_doc_set_is_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    for name in (
        "README.md",
        "docs/api.md",
        "docs/configuration.md",
        "docs/videos.md",
        "docs/quotas.md",
        "docs/operations.md",
        "docs/deployment.md",
        "docs/security.md",
        "docs/testing.md",
        "docs/benchmarks.md",
        "bench/RESULTS.md",
    ):
        assert name in names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_readme_links_every_doc() -> None:
    linked = {
        (ROOT / t.partition("#")[0]).resolve() for t in links((ROOT / "README.md").read_text())
    }
    assert [p for p in DOCS if p.name != "README.md" and p not in linked] == []


def test_the_readme_is_short() -> None:
    assert (ROOT / "README.md").stat().st_size < README_MAX_BYTES


def test_the_checker_catches_what_it_must() -> None:
    text = "[a](docs/api.md) `[b](nowhere.md)` [c](https://example.com/x)\n```\n[d](gone.md)\n```\n"
    assert links(text) == ["docs/api.md", "https://example.com/x"]
    assert slug("A team's own view") == "a-teams-own-view"
    assert slug("`gateway admin`") == "gateway-admin"
    assert slug("Docker compose (one host)") == "docker-compose-one-host"
    assert anchors("# Same\n## Same\n```\n# Not a heading\n```\n") == {"same", "same-1"}


def test_a_missing_file_a_missing_heading_and_an_escape_are_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n## Endpoints\n")
    doc = tmp_path / "docs" / "index.md"
    doc.write_text(
        "[ok](api.md#endpoints) [dir](../docs) [self](#index) [gone](nowhere.md) "
        "[heading](api.md#no-such-heading) [out](../../elsewhere.md)\n# Index\n"
    )
    assert broken_links(doc, root=tmp_path.resolve()) == [
        "nowhere.md: no such file",
        "api.md#no-such-heading: no heading #no-such-heading in docs/api.md",
        "../../elsewhere.md: outside the repository",
    ]
