"""``kubectl kustomize`` for the few features deploy/kubernetes uses, in Python, so the rendered
manifests are checked on machines without kubectl (and kubectl's output is checked against it).

A kustomization field this renderer does not know fails loudly rather than being ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = frozenset({"apiVersion", "kind", "resources", "labels", "images"})


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    assert not unknown, f"kustomization fields this renderer does not apply: {sorted(unknown)}"
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    for label in kustomization.get("labels", []):
        # Selectors and pod templates would need includeSelectors/includeTemplates.
        assert not label.get("includeSelectors"), label
        assert not label.get("includeTemplates"), label
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                container["image"] = _retag(container["image"], image)
    return [copy.deepcopy(d) for d in docs]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def _retag(ref: str, image: dict[str, str]) -> str:
    # As kustomize 5 does it: a new tag and a digest together give name:tag@digest.
    assert set(image) <= {"name", "newName", "newTag", "digest"}, image
    assert "@" not in ref, ref
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    if name != image["name"]:
        return ref
    out = image.get("newName", name)
    if tag := image.get("newTag", tag):
        out += f":{tag}"
    if digest := image.get("digest"):
        out += f"@{digest}"
    return out
