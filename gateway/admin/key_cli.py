"""gateway admin api-keys ...: gateway API keys from a terminal, in both views.

    gateway admin api-keys list [--team T]
    gateway admin api-keys create NAME [--team T] [--expires-in-days D] [--models M,...]
                                       [--limit KIND=V ...] [--role R ...]
    gateway admin api-keys revoke ID [--any-team]
    gateway admin api-keys rotate ID [--grace-seconds S] [--any-team]

With ``--team`` (list, create) or ``--any-team`` (revoke, rotate) the command goes through the
admin API and needs the admin role; without, it manages the caller's own team's keys
(``/v1/gateway/api-keys``) and needs the team-admin role. The token is the caller's JWT
(--token or GATEWAY_ADMIN_TOKEN). A new or rotated key's secret is printed once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gateway.admin.cli import AdminClient, CliError, iso_text, parse_assignments, q
from gateway.admin.tables import number, render, shown

EPILOG = """\
examples:
  gateway admin api-keys create nightly --team search --limit requests_per_minute=60
  gateway admin api-keys list                     (your own team's keys, as a team admin)
  gateway admin api-keys rotate ID --grace-seconds 3600
  gateway admin api-keys revoke ID --any-team     (any team's key, as a gateway admin)

With --team (list, create) or --any-team (revoke, rotate) the command uses the admin API and
needs the admin role; without, it manages your own team's keys and needs the team-admin role.
A new or rotated key's secret is printed once: store it then."""
OWN = "/v1/gateway/api-keys"
ANY = "/admin/v1/api-keys"


def keys_table(doc: dict[str, Any]) -> str:
    rows = [
        [
            k["id"],
            k["name"],
            k["team"],
            k["state"],
            iso_text(k["expires_at"]) if k["expires_at"] else "never",
            iso_text(k["last_used_at"]),
            " ".join(f"{kind}={number(v)}" for kind, v in k["limits"].items()) or "-",
            ",".join(k["models"]) if k["models"] is not None else "any",
        ]
        for k in doc["data"]
    ]
    if not rows:
        return "no API keys"
    headers = ["ID", "NAME", "TEAM", "STATE", "EXPIRES", "LAST USED", "LIMITS", "MODELS"]
    return render(headers, rows)


def key_lines(k: dict[str, Any]) -> str:
    lines = [
        f"id       {shown(k['id'])}",
        f"name     {shown(k['name'])} (team {shown(k['team'])}, calls as {shown(k['user'])})",
        f"state    {shown(k['state'])}",
        f"expires  {iso_text(k['expires_at']) if k['expires_at'] else 'never'}",
    ]
    if k.get("previous_key_valid_until"):
        lines.append(f"old key  valid until {iso_text(k['previous_key_valid_until'])}")
    if "key" in k:
        lines.append(f"key      {shown(k['key'])}")
        lines.append("         (shown this once: store it now; the gateway keeps only a hash)")
    return "\n".join(lines)


def run_keys(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    check_keys_args(a)
    if a.action == "list":
        path = f"/admin/v1/teams/{q(a.team)}/api-keys" if a.team else OWN
        return c.call("GET", path), keys_table
    if a.action == "create":
        body: dict[str, Any] = {"name": a.name}
        if a.expires_in_days is not None:
            body["expires_in_days"] = a.expires_in_days
        if a.models:
            body["models"] = [m.strip() for m in a.models.split(",") if m.strip()]
        if a.limit:
            body["limits"] = parse_assignments(a.limit)
        if a.role:
            body["roles"] = a.role
        path = f"/admin/v1/teams/{q(a.team)}/api-keys" if a.team else OWN
        return c.call("POST", path, body), key_lines
    base = ANY if a.any_team else OWN
    if a.action == "revoke":
        return c.call("DELETE", f"{base}/{q(a.name)}"), key_lines
    body = {} if a.grace_seconds is None else {"grace_seconds": a.grace_seconds}
    return c.call("POST", f"{base}/{q(a.name)}/rotate", body), key_lines


def add_keys_parser(
    command: Callable[..., argparse.ArgumentParser],
) -> None:
    """Register ``api-keys`` through the admin parser's ``command`` helper."""
    p = command(
        "api-keys",
        run_keys,
        "gateway API keys: list, create, revoke, rotate",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        choices=["list", "create", "revoke", "rotate"],
        help="list the keys, create one, revoke one, or give one a new secret",
    )
    p.add_argument(
        "name", nargs="?", metavar="NAME|ID", help="create: the key's name; revoke, rotate: its id"
    )
    p.add_argument("--team", help="list, create: this team's keys, as a gateway admin")
    p.add_argument(
        "--any-team", action="store_true", help="revoke, rotate: as a gateway admin, any team's"
    )
    p.add_argument("--expires-in-days", type=float, metavar="DAYS", help="create: expiry")
    p.add_argument("--models", metavar="M,...", help="create: allowed models or globs")
    p.add_argument(
        "--limit",
        action="append",
        metavar="KIND=VALUE",
        help="create: requests_per_minute, tokens_per_minute, spend_per_day, spend_per_month "
        "or concurrent_jobs (repeat for several)",
    )
    p.add_argument("--role", action="append", help="create, as an admin: a role for the key")
    p.add_argument(
        "--grace-seconds",
        type=float,
        metavar="SECONDS",
        help="rotate: how long the old secret keeps working (default: the gateway's)",
    )


def check_keys_args(a: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; raises CliError(2)."""
    if a.action != "list" and not a.name:
        what = "name" if a.action == "create" else "id"
        raise CliError(2, f"api-keys {a.action}: which {what}? (gateway admin api-keys --help)")
    if a.action == "list" and a.name:
        raise CliError(2, "api-keys list takes no name; use --team")
