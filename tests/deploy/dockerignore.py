"""The build context a ``.dockerignore`` leaves, computed the way the docker CLI computes it.

Mirrors moby's patternmatcher and archiver: each line is a ``filepath.Match`` pattern (plus
``**``) against the path relative to the context root; a pattern that matches a parent
directory matches everything below it; ``!`` re-includes; the last matching line wins. The walk
skips an excluded directory unless some ``!`` pattern starts with that directory's path.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned, without the leading "!"
    exception: bool  # a "!" line: re-includes what earlier lines excluded
    regex: re.Pattern[str]


def parse(text: str) -> list[Pattern]:
    """The patterns of a .dockerignore file, cleaned as ``ignorefile.ReadAll`` cleans them."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        line = posixpath.normpath(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        out.append(Pattern(line, exception, _compile(line)))
    return out


def _compile(pattern: str) -> re.Pattern[str]:
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            # "**" at the end takes everything; elsewhere any number of whole segments.
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch in "[]":
            regex += ch
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        else:
            regex += re.escape(ch)
        i += 1
    return re.compile(regex)


class ContextFilter:
    def __init__(self, patterns: Iterable[Pattern]) -> None:
        self.patterns = list(patterns)

    @classmethod
    def from_file(cls, path: Path) -> ContextFilter:
        return cls(parse(path.read_text()))

    def excluded(self, rel: str) -> bool:
        """Whether a path (relative, with "/") stays out of the context."""
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for p in self.patterns:
            # Only a line that could change the verdict is looked at, as moby does.
            if p.exception != excluded:
                continue
            if any(p.regex.fullmatch(c) for c in candidates):
                excluded = not p.exception
        return excluded

    def files(self, root: Path) -> list[str]:
        """The context's files as COPY sees them. (The CLI also sends the Dockerfile and the
        .dockerignore; the builder drops them again when the patterns exclude them.)"""
        return sorted(self._walk(root, ""))

    def _walk(self, root: Path, rel: str) -> Iterator[str]:
        for entry in sorted((root / rel).iterdir() if rel else root.iterdir()):
            path = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir() and not entry.is_symlink()
            if self.excluded(path):
                if is_dir and self._may_reinclude_below(path):
                    yield from self._walk(root, path)
                continue
            if is_dir:
                yield from self._walk(root, path)
            else:
                yield path

    def _may_reinclude_below(self, directory: str) -> bool:
        return any(p.exception and f"{p.text}/".startswith(f"{directory}/") for p in self.patterns)
