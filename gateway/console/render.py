"""Turns a page's data into HTML: one Jinja2 environment, autoescaping everything, with the
console's number and time formats as filters. Templates live in ``templates/``, next to this
module; an undefined name in a template is an error, not an empty string."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from gateway.console import format

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


class Renderer:
    def __init__(
        self,
        *,
        currency: str,
        tz: tzinfo,
        clock: Callable[[], float],
        alert_share: float = 0.9,
    ) -> None:
        self._clock = clock
        self._tz = tz
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"], default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            money=lambda v: format.money(v, currency),
            number=format.number,
            percent=format.percent,
            duration=format.duration,
            limit=lambda v, kind: format.limit_value(kind, v, currency),
            when=self.when,
            compact_json=_compact_json,
        )
        env.globals.update(
            currency=currency, kind_labels=format.KIND_LABELS, alert_percent=alert_share * 100
        )
        self._env = env

    def when(self, epoch: float | int | None) -> Markup:
        """A ``<time>``: relative in the text, absolute (and machine-readable) on hover."""
        if epoch is None:
            return Markup("never")
        absolute = format.absolute(epoch, self._tz)
        iso = format.absolute(epoch).removesuffix(" UTC").replace(" ", "T") + "Z"
        return Markup('<time datetime="{}" title="{}">{}</time>').format(
            iso, absolute, format.relative(epoch, self._clock())
        )

    def page(self, name: str, context: Mapping[str, Any]) -> str:
        return self._env.get_template(name).render(context)


def _compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)
