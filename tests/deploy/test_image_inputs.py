"""What goes into the image: an exact base, hash-pinned packages from the locks, a Dockerfile
both builders accept, and a build context of only the files the image copies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import cast

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy import pip_lock
from tests.deploy.dockerignore import ContextFilter, parse
from tests.deploy.support import (
    BUILD_LOCK,
    DEPLOY,
    DOCKERFILE,
    DOCKERIGNORE,
    REQUIREMENTS_LOCK,
    ROOT,
    base_images,
    copy_sources,
    dockerfile_instructions,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The context is ~0.6 MB today; a few MB means something unintended is being sent.
CONTEXT_LIMIT_BYTES = 2_000_000
_BASE = re.compile(r"python:3\.11\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the base ---------------------------------------------------------------------------------


def test_base_is_an_exact_python_311_release() -> None:
    # A patch release on a named Debian release: python:3.11-slim moves with every patch, and
    # since trixie it is a different Debian too. A digest may follow once someone records it.
    bases = set(base_images())
    assert len(bases) == 1, f"the build and runtime stages differ: {bases}"
    # The runtime stage takes the build stage's venv, whose python links into the base.
    [base] = bases
    assert _BASE.fullmatch(base), base


def test_the_base_is_replaceable_for_local_builds() -> None:
    # `make image` builds FROM a base made with debootstrap, through this build argument.
    ins = dockerfile_instructions()
    assert ins[0][0] == "ARG"
    assert ins[0][1].startswith("PYTHON_IMAGE=")
    froms = [a.split()[0] for w, a in ins if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg PYTHON_IMAGE=$(IMAGE_BASE)" in makefile


# -- both builders ----------------------------------------------------------------------------


def test_dockerfile_needs_no_buildkit_feature() -> None:
    text = DOCKERFILE.read_text()
    # A syntax directive makes BuildKit pull a frontend image; the classic builder has none.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    for word, args in dockerfile_instructions():
        words = args.split()
        # An instruction's own flags come before its arguments.
        flags = words[: next((i for i, w in enumerate(words) if not w.startswith("--")), 0)]
        if word == "RUN":
            assert not flags, f"RUN {flags}: --mount and friends are BuildKit-only"
            assert "<<" not in args, "heredocs are BuildKit-only"
        elif word in ("COPY", "ADD"):
            assert {f.split("=")[0] for f in flags} <= {"--from", "--chown"}, (word, flags)


def test_ignore_file_sits_where_both_builders_read_it() -> None:
    assert DOCKERIGNORE.is_file()
    # BuildKit prefers <Dockerfile>.dockerignore and the classic builder never reads it: with
    # one there, the two builders would send different contexts.
    assert not (DEPLOY / "Dockerfile.dockerignore").exists()
    assert not list(DEPLOY.rglob("*.dockerignore"))


# -- the build context ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context() -> list[str]:
    return ContextFilter.from_file(DOCKERIGNORE).files(ROOT)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/starlette/__init__.py",
        ".venv-sdk2/bin/python",
        ".gateway-data/dump.rdb",
        ".git/HEAD",
        ".git/objects/pack/pack-1.pack",
        ".mypy_cache/3.11/gateway/app.meta.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/1/2",
        "crazyrouter_gateway.egg-info/PKG-INFO",
        "gateway/__pycache__/app.cpython-311.pyc",
        "gateway/web/__pycache__/routes.cpython-311.pyc",
        "deploy/.env",
        ".env",
        "tests/conftest.py",
        "bench/results/latest.json",
        "deploy/kubernetes/secret.example.yaml",
    ],
)
def test_context_leaves_out_local_state(path: str) -> None:
    assert ContextFilter.from_file(DOCKERIGNORE).excluded(path)


def test_context_is_what_the_image_copies_and_small(context: list[str]) -> None:
    sources = copy_sources()
    assert set(sources) >= {"pyproject.toml", "README.md", "gateway", _rel(REQUIREMENTS_LOCK)}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert any(f == src or f.startswith(f"{src}/") for f in context), f"{src} is ignored"
    extra = [f for f in context if not any(f == s or f.startswith(f"{s}/") for s in sources)]
    assert not extra, f"sent but never copied: {extra}"
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]
    size = sum((ROOT / f).stat().st_size for f in context)
    assert size < CONTEXT_LIMIT_BYTES, f"{size} bytes in {len(context)} files"
    # Whatever local state exists on this machine stays out.
    for name in (".venv", ".venv-sdk2", ".gateway-data", ".git", ".mypy_cache", ".hypothesis"):
        assert not [f for f in context if f.split("/")[0] == name], name


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        # A pattern that matches a directory takes everything below it.
        ("*", "a/b/c.txt", True),
        ("*\n!a/", "a/b/c.txt", False),
        ("*\n!a/\n**/b", "a/b/c.txt", True),
        # "*" stops at "/"; "**" crosses any number of directories, none included.
        ("a/*.py", "a/b/c.py", False),
        ("a/**/*.py", "a/b/c/d.py", True),
        ("**/*.py", "c.py", True),
        # The last matching line wins; a leading "/" and "./" mean the root.
        ("!a\n*", "a", True),
        ("/a/./b", "a/b", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("a.c", "abc", False),
    ],
)
def test_context_filter_follows_docker(patterns: str, path: str, excluded: bool) -> None:
    # The same rules as moby's patternmatcher; the file list this filter computes for the
    # repository was checked once against what the classic builder's COPY . received.
    assert ContextFilter(parse(patterns)).excluded(path) is excluded


# -- the locks --------------------------------------------------------------------------------


def _image_environment() -> dict[str, str]:
    """The marker environment of the image: Linux, CPython 3.11."""
    # Environment is a TypedDict of str fields, which dict() widens to dict[str, object].
    env = cast("dict[str, str]", dict(default_environment()))
    env.update(
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        python_version="3.11",
        python_full_version="3.11.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def _check_pins(lock: Path, requirements: list[str]) -> dict[str, pip_lock.Pin]:
    pins = pip_lock.read(lock)
    assert pins, lock.name
    for name, pin in pins.items():
        assert pin.hashes, f"{lock.name}: {name} has no --hash"
    env = _image_environment()
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = pip_lock.normalize(req.name)
        assert name in pins, f"{_rel(lock)} does not pin {req.name}: regenerate it"
        assert req.specifier.contains(pins[name].version, prereleases=True), (
            f"{_rel(lock)} pins {name}=={pins[name].version}, pyproject.toml asks {req}"
        )
    return pins


def _generated_by(lock: Path) -> list[str]:
    command = next(line for line in pip_lock.header(lock) if "uv pip compile" in line)
    words = command.split("uv pip compile", 1)[1].split()
    assert words[words.index("--output-file") + 1] == _rel(lock)
    assert "--generate-hashes" in words
    # The image's interpreter and platform, whatever Python runs the command.
    assert words[words.index("--python-version") + 1] == "3.11"
    assert words[words.index("--python-platform") + 1] == "x86_64-unknown-linux-gnu"
    return words


def test_runtime_lock_pins_every_dependency() -> None:
    pins = _check_pins(REQUIREMENTS_LOCK, PYPROJECT["project"]["dependencies"])
    # PyJWT[crypto] is what pulls in cryptography.
    assert "cryptography" in pins
    assert "crazyrouter-gateway" not in pins, "the project itself is built, not locked"
    assert _generated_by(REQUIREMENTS_LOCK)[0] == "pyproject.toml"


def test_build_lock_pins_the_build_backend_and_pip() -> None:
    pins = _check_pins(BUILD_LOCK, [*PYPROJECT["build-system"]["requires"], "pip"])
    assert _generated_by(BUILD_LOCK)[0] == "-"
    # The build tools stay out of the runtime lock, so they never reach the image.
    assert not set(pins) & {"pip", "setuptools", "wheel"} & set(pip_lock.read(REQUIREMENTS_LOCK))


def test_the_base_python_satisfies_requires_python() -> None:
    m = _BASE.fullmatch(base_images()[0])
    assert m
    requires = PYPROJECT["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(f"3.11.{m.group(1)}")


def test_dockerfile_installs_only_from_the_locks() -> None:
    runs = [a for w, a in dockerfile_instructions() if w == "RUN"]
    installs = [
        cmd.strip()
        for run in runs
        for cmd in run.split("&&")
        if re.search(r"\bpip\b.*\binstall\b", cmd)
    ]
    assert installs
    for cmd in installs:
        words = cmd.split()
        if "--no-deps" in words:
            # Only the project's own wheel, built from the context.
            assert words[-1] == "/tmp/wheels/*.whl", cmd
            continue
        assert "--require-hashes" in words, cmd
        lock = words[words.index("-r") + 1]
        assert lock in (_rel(REQUIREMENTS_LOCK), _rel(BUILD_LOCK)), cmd
        if lock == _rel(REQUIREMENTS_LOCK):
            # Wheels only: a dependency cannot turn into a compile in the image build.
            assert words[words.index("--only-binary") + 1] == ":all:", cmd
    [wheel] = [c for r in runs for c in r.split("&&") if " wheel " in c]
    # No isolated build environment: it would fetch an unpinned setuptools.
    assert "--no-build-isolation" in wheel.split()
    assert "--no-deps" in wheel.split()
    assert any("pip --python /opt/gateway/bin/python check" in r for r in runs)
