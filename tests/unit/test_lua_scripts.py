"""The Lua scripts ship as files, one per atomic operation, each documenting its interface."""

from __future__ import annotations

from importlib.resources import files

import pytest

from gateway.store.lua import script

SCRIPTS = [
    ("gateway.quota", name)
    for name in (
        "rate",
        "reserve",
        "settle",
        "renew",
        "mark",
        "meter_reserve",
        "meter_settle",
        "meter_cancel",
    )
] + [
    ("gateway.videos", name)
    for name in (
        "idempotency_begin",
        "idempotency_sent",
        "idempotency_end",
        "reconciler_lead",
        "job_update",
    )
]


@pytest.mark.parametrize(("package", "name"), SCRIPTS)
def test_each_script_opens_with_its_keys_and_argv(package: str, name: str) -> None:
    text = (files(package) / "lua" / f"{name}.lua").read_text()
    assert text.startswith("-- KEYS:")
    assert "ARGV" in text.split("\n\n", 1)[0] or "ARGV" in text[:400]


def test_the_prelude_is_prepended_where_asked() -> None:
    rate = script("gateway.quota", "rate")
    assert "--!prelude" not in rate
    assert rate.index("local function limit") < rate.index("ZREMRANGEBYRANK")
    assert "local function limit" not in script("gateway.quota", "renew")


def test_every_lua_file_is_used() -> None:
    shipped = {
        (pkg, p.name.removesuffix(".lua"))
        for pkg in ("gateway.quota", "gateway.videos")
        for p in (files(pkg) / "lua").iterdir()
        if p.name.endswith(".lua") and p.name != "prelude.lua"
    }
    assert shipped == set(SCRIPTS)
