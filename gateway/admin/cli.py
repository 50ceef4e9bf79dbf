"""gateway admin ...: the admin API from a terminal, with the standard library only.

    gateway admin teams                         every known team: usage / limit per kind
    gateway admin show TEAM                     one team's limits, usage, resets, sources
    gateway admin set-limits TEAM k=v ...       PATCH overrides (--replace: PUT, all at once)
    gateway admin clear-limits TEAM             DELETE overrides: back to the config
    gateway admin reset-usage TEAM --window W   W: minute | day | month | all
    gateway admin jobs TEAM [--limit N] [--after ID]
    gateway admin job ID [--wait [--interval S]]
    gateway admin keys [enable|disable ID]
    gateway admin usage [--from D] [--to D] [--group-by F] [--team T] [--csv]
    gateway admin reconcile                     the upstream's bill per key against our charges
    gateway admin audit [--limit N] [--before ID] [--actor A] [--team T] [--action A]
    gateway admin api-keys list|create|revoke|rotate ...   (gateway admin api-keys --help)

The gateway comes from --url or GATEWAY_URL, the admin's JWT from --token or
GATEWAY_ADMIN_TOKEN (make run prints both as export lines). Exit codes: 0 done, 1 the gateway
answered an error (its message is printed) or a waited-for job failed, 2 a usage error or the
gateway could not be reached, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.admin.tables import number, render, shown, shown_csv
from gateway.quota.model import KINDS

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 15.0
WAIT_INTERVAL_S = 2.0
TERMINAL_STATUSES = frozenset({"completed", "failed"})
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
KIND_LABELS = {  # the teams table's column headers, in KINDS order
    "requests_per_minute": "REQ/MIN",
    "concurrent_jobs": "CONCURRENT",
    "video_seconds_per_day": "VIDEO-S/DAY",
    "video_seconds_per_month": "VIDEO-S/MONTH",
    "spend_per_month": "SPEND/MONTH",
    "tokens_per_minute": "TOK/MIN",
    "tokens_per_day": "TOK/DAY",
    "spend_per_day": "SPEND/DAY",
}
KIND_UNITS = {  # what set-limits --help says a number means, per kind
    "requests_per_minute": "requests per minute, any endpoint (a whole number)",
    "concurrent_jobs": "video jobs not yet finished (a whole number)",
    "video_seconds_per_day": "seconds of video per calendar day, times the model's weight",
    "video_seconds_per_month": "seconds of video per calendar month, times the model's weight",
    "spend_per_month": "spend per calendar month, every priced call (video included), in "
    "quota.currency",
    "tokens_per_minute": "input plus output tokens in the last 60 s, like OpenAI's TPM",
    "tokens_per_day": "input plus output tokens per calendar day (a whole number)",
    "spend_per_day": "spend per calendar day, every priced call, in quota.currency",
}
USAGE_COLUMNS = {  # the usage table's measure columns
    "requests": "REQUESTS",
    "input_tokens": "INPUT",
    "cached_tokens": "CACHED",
    "output_tokens": "OUTPUT",
    "images": "IMAGES",
    "audio_seconds": "AUDIO-S",
    "video_seconds": "VIDEO-S",
    "spend": "SPEND",
}
UNLIMITED_WORDS = frozenset({"null", "none", "unlimited"})


class CliError(Exception):
    def __init__(self, exit_code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.body = body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would resend the Authorization header to wherever a redirect points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AdminClient:
    def __init__(self, url: str, token: str, timeout: float = TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(2, f"--url must be an http(s) URL, not {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        raw = self._send(method, path, body, accept="application/json")
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(1, f"the gateway at {self.url} did not answer JSON") from None

    def text(self, path: str) -> str:
        """A GET whose answer is text (a CSV report), as it came."""
        return self._send("GET", path, None, accept="text/csv").decode("utf-8", "replace")

    def _send(self, method: str, path: str, body: Any, *, accept: str) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        # The scheme was checked to be http(s) above, so no file: or custom-scheme opening.
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(2, f"cannot reach the gateway at {self.url}: {reason}") from None
        return raw


def _http_error(exc: urllib.error.HTTPError) -> CliError:
    raw = exc.read()
    exc.close()
    try:
        body = json.loads(raw)
        err = body["error"]
        code = err.get("code") or "error"
        param = f" (param {err['param']})" if err.get("param") else ""
        return CliError(1, f"{exc.code} {code}{param}: {err.get('message')}", body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return CliError(1, f"{exc.code} {exc.reason}")


def q(segment: str) -> str:
    """One path segment, quoted so that a name can never change the path."""
    return urllib.parse.quote(segment, safe="")


def parse_assignments(pairs: Sequence[str]) -> dict[str, int | float | None]:
    """``requests_per_minute=60 spend_per_month=unlimited`` to a limits document."""
    out: dict[str, int | float | None] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise CliError(2, f"expected KIND=VALUE, got {pair!r}")
        if text.lower() in UNLIMITED_WORDS:
            out[key] = None
            continue
        try:
            out[key] = int(text)
        except ValueError:
            try:
                out[key] = float(text)
            except ValueError:
                raise CliError(
                    2, f"{key}: {text!r} is not a number, 'null' or 'unlimited'"
                ) from None
    return out


# -- rendering --------------------------------------------------------------------------------


def iso_text(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def teams_table(doc: dict[str, Any]) -> str:
    headers = ["TEAM", "CONFIGURED", *KIND_LABELS.values()]
    rows = []
    for t in doc["data"]:
        cells = [t["team"], "yes" if t["configured"] else "no"]
        for kind in KIND_LABELS:
            lim = t["limits"][kind]
            mark = "*" if lim["source"] == "override" else ""
            cells.append(f"{number(lim['used'])}/{number(lim['limit'])}{mark}")
        rows.append(cells)
    legend = "used/limit per kind; * = admin override"
    if not rows:
        return "no teams yet"
    return render(headers, rows) + "\n" + legend


def team_table(t: dict[str, Any]) -> str:
    head = (
        f"team {shown(t['team'])} ({'configured' if t['configured'] else 'not in the config'}; "
        f"currency {shown(t['currency'])}, time zone {shown(t['time_zone'])})"
    )
    rows = [
        [
            kind,
            number(v["limit"]),
            number(v["used"]),
            number(v["remaining"], none="-") if v["limit"] is not None else "-",
            v["resets_at"] or "-",
            v["source"],
        ]
        for kind, v in t["limits"].items()
    ]
    table = render(
        ["KIND", "LIMIT", "USED", "REMAINING", "RESETS AT", "SOURCE"], rows, right={1, 2, 3}
    )
    return head + "\n" + table


def jobs_table(doc: dict[str, Any]) -> str:
    rows = [
        [
            j["id"],
            j["status"],
            j["model"],
            str(j["seconds"]),
            j["size"],
            j["user"],
            j["upstream_key_id"],
            iso_text(j["created_at"]),
        ]
        for j in doc["data"]
    ]
    if not rows:
        return "no jobs"
    headers = ["ID", "STATUS", "MODEL", "SECONDS", "SIZE", "USER", "KEY", "CREATED"]
    out = render(headers, rows, right={3})
    if doc.get("has_more"):
        out += f"\nmore: --after {shown(doc['last_id'])}"
    return out


def job_lines(j: dict[str, Any]) -> str:
    fields = dict(j)
    for name in ("created_at", "completed_at"):
        fields[name] = iso_text(fields.get(name)) if fields.get(name) else None
    width = max(len(shown(k)) for k in fields)
    return "\n".join(
        f"{shown(k).ljust(width)}  {shown(v) if isinstance(v, str) else json.dumps(v)}"
        for k, v in fields.items()
    )


def keys_table(doc: dict[str, Any]) -> str:
    keys = doc["data"] if doc.get("object") == "list" else [doc]
    rows = [[k["id"], k["state"], str(k["in_flight"])] for k in keys]
    return render(["KEY", "STATE", "IN FLIGHT"], rows, right={2})


def audit_table(doc: dict[str, Any]) -> str:
    def compact(v: Any) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":"))

    rows = [
        [
            e["time"] or "-",
            f"{e['actor']['user']}@{e['actor']['team']}",
            e["action"] or "-",
            e["target"] or "-",
            compact(e["before"]),
            compact(e["after"]),
        ]
        for e in doc["data"]
    ]
    more = doc.get("next_before")
    tail = f"\nolder entries: --before {more}" if more else ""
    if not rows:
        return "no audit entries" + tail
    return render(["TIME", "WHO", "ACTION", "TARGET", "BEFORE", "AFTER"], rows) + tail


# -- commands ---------------------------------------------------------------------------------

Command = Callable[[AdminClient, argparse.Namespace], tuple[Any, Callable[[Any], str]]]


def _teams(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    return c.call("GET", "/admin/v1/teams"), teams_table


def _show(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    return c.call("GET", f"/admin/v1/teams/{q(a.team)}"), team_table


def _set_limits(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    body = parse_assignments(a.limits)
    method = "PUT" if a.replace else "PATCH"
    return c.call(method, f"/admin/v1/teams/{q(a.team)}/limits", body), team_table


def _clear_limits(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    return c.call("DELETE", f"/admin/v1/teams/{q(a.team)}/limits"), team_table


def _reset_usage(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    path = f"/admin/v1/teams/{q(a.team)}/usage/reset"
    return c.call("POST", path, {"window": a.window}), team_table


def _query(**params: Any) -> str:
    given = {k: str(v) for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _jobs(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    path = f"/admin/v1/teams/{q(a.team)}/jobs" + _query(limit=a.limit, after=a.after)
    return c.call("GET", path), jobs_table


def _job(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    return c.call("GET", f"/admin/v1/jobs/{q(a.id)}"), job_lines


def _clock_time() -> str:
    return datetime.now(UTC).strftime("%H:%M:%SZ")


def watch_job(
    client: AdminClient,
    job_id: str,
    *,
    interval: float,
    on_change: Callable[[dict[str, Any]], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll one job until it is completed or failed; ``on_change`` sees it first and whenever
    its status or progress moved. Ctrl-C ends the wait as a CliError, never a traceback."""
    last: tuple[Any, Any] | None = None
    job: dict[str, Any] = {}
    try:
        while True:
            job = client.call("GET", f"/admin/v1/jobs/{q(job_id)}")
            seen = (job.get("status"), job.get("progress"))
            if seen != last:
                on_change(job)
                last = seen
            if job.get("status") in TERMINAL_STATUSES:
                return job
            sleep(interval)
    except KeyboardInterrupt:
        status = f" (still {job['status']})" if job.get("status") else ""
        raise CliError(INTERRUPTED, f"stopped waiting for {job_id}{status}") from None


def change_line(job: dict[str, Any]) -> str:
    progress = job.get("progress")
    return " ".join(
        [
            _clock_time(),
            shown(job["id"]),
            shown(job["status"]),
            f"{progress}%" if progress is not None else "-",
        ]
    )


def _wait_job(
    c: AdminClient, a: argparse.Namespace, out: TextIO, as_json: bool
) -> tuple[int, dict[str, Any]]:
    def show(job: dict[str, Any]) -> None:
        line = json.dumps(job, separators=(",", ":")) if as_json else change_line(job)
        print(line, file=out, flush=True)

    job = watch_job(c, a.id, interval=a.interval, on_change=show)
    if job["status"] == "failed":
        error = job.get("error") or {}
        code = error.get("code") or "failed"
        return 1, {"message": f"job {job['id']} failed: {code}: {error.get('message') or '-'}"}
    return 0, job


def _keys(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    if a.action in (None, "list"):
        if a.key_id is not None:
            raise CliError(2, "keys: a key id goes with 'enable' or 'disable'")
        return c.call("GET", "/admin/v1/upstream-keys"), keys_table
    if a.key_id is None:
        raise CliError(2, f"keys {a.action}: which key? (gateway admin keys {a.action} ID)")
    return c.call("POST", f"/admin/v1/upstream-keys/{q(a.key_id)}/{a.action}"), keys_table


def usage_table(doc: dict[str, Any]) -> str:
    group = list(doc["group_by"])
    measures = [m for m in USAGE_COLUMNS]
    rows = [
        [str(r[g]) or "-" for g in group] + [number(r[m]) for m in measures] for r in doc["data"]
    ]
    if not rows:
        return f"no usage from {doc['from']} to {doc['to']}"
    total = doc["total"]
    rows.append(["TOTAL"] + [""] * (len(group) - 1) + [number(total[m]) for m in measures])
    headers = [g.upper() for g in group] + [USAGE_COLUMNS[m] for m in measures]
    right = set(range(len(group), len(headers)))
    legend = f"{doc['from']} to {doc['to']}; spend in {doc['currency']}"
    return render(headers, rows, right=right) + "\n" + legend


def _usage(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    query = _query(
        **{"from": a.since, "to": a.until, "group_by": a.group_by, "team": a.team},
        format="csv" if a.csv else None,
    )
    if a.csv:
        return c.text("/admin/v1/usage" + query), lambda text: shown_csv(str(text)).rstrip("\n")
    return c.call("GET", "/admin/v1/usage" + query), usage_table


def bill_table(doc: dict[str, Any]) -> str:
    rows = [
        [
            str(r["key"]),
            number(r["upstream_spend"], none="?"),
            number(r["gateway_spend"]),
            number(r["drift"], none="?"),
            str(r.get("error") or ""),
        ]
        for r in doc["data"]
    ]
    if not rows:
        return "no upstream keys"
    headers = ["KEY", "UPSTREAM BILLED", "GATEWAY CHARGED", "DRIFT", "ERROR"]
    legend = "since each key's first reconciliation; drift > 0: spend the gateway did not meter"
    return render(headers, rows, right={1, 2, 3}) + "\n" + legend


def _reconcile(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    return c.call("POST", "/admin/v1/reconcile", {}), bill_table


def _audit(c: AdminClient, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    query = _query(limit=a.limit, before=a.before, actor=a.actor, team=a.team, action=a.action)
    return c.call("GET", "/admin/v1/audit" + query), audit_table


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    as_json = bool(getattr(args, "json", False))
    url = getattr(args, "url", None) or os.environ.get("GATEWAY_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("GATEWAY_ADMIN_TOKEN", "")
    try:
        if not token:
            raise CliError(2, "no admin token: set GATEWAY_ADMIN_TOKEN or pass --token")
        client = AdminClient(url, token)
        if getattr(args, "wait", False):
            code, outcome = _wait_job(client, args, out, as_json)
            if code:
                print(f"gateway admin: {shown(outcome['message'])}", file=err)
            elif not as_json:
                print(job_lines(outcome), file=out)
            return code
        command: Command = args.admin_handler
        doc, show = command(client, args)
    except CliError as exc:
        if as_json and exc.body is not None:
            print(json.dumps(exc.body, indent=2), file=out)
        print(f"gateway admin: {shown(exc.message)}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gateway admin: interrupted", file=err)
        return INTERRUPTED
    print(json.dumps(doc, indent=2) if as_json else show(doc), file=out)
    return 0


def add_admin_parser(sub: Any) -> None:
    """Add ``admin`` and its subcommands to the ``gateway`` parser's subparsers."""
    # Common options on the group and on every subcommand, SUPPRESSed so that neither level
    # overwrites the other: ``gateway admin --json teams`` and ``... teams --json`` both work.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"gateway URL (GATEWAY_URL, {DEFAULT_URL})"
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="admin JWT (GATEWAY_ADMIN_TOKEN)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON"
    )
    admin = sub.add_parser(
        "admin",
        parents=[common],
        help="quota administration through the admin API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = admin.add_subparsers(
        dest="admin_command",
        required=True,
        metavar="COMMAND",
        help="one of these (gateway admin COMMAND --help for its arguments)",
    )

    def command(name: str, handler: Command, help_: str, **extra: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(
            name, parents=[common], help=help_, description=help_, **extra
        )
        p.set_defaults(admin_handler=handler)
        return p

    team_help = "the team's name, as in its tokens' team claim"
    command("teams", _teams, "every known team with usage and limits")
    command("show", _show, "one team's limits, usage, resets and their sources").add_argument(
        "team", help=team_help
    )
    p = command(
        "set-limits",
        _set_limits,
        "set overrides: KIND=NUMBER|null|unlimited ...",
        epilog=_kinds_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("team", help=team_help)
    p.add_argument(
        "limits",
        nargs="+",
        metavar="KIND=VALUE",
        help="a limit kind (below) and a number, or null / unlimited for no limit",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace all overrides with these (PUT); default: change only these (PATCH)",
    )
    command("clear-limits", _clear_limits, "remove every override").add_argument(
        "team", help=team_help
    )
    p = command("reset-usage", _reset_usage, "zero a window's counters")
    p.add_argument("team", help=team_help)
    p.add_argument(
        "--window",
        required=True,
        choices=["minute", "day", "month", "all"],
        help="which counters: the current minute, day, month, or all of them",
    )
    p = command("jobs", _jobs, "a team's video jobs, newest first")
    p.add_argument("team", help=team_help)
    p.add_argument(
        "--limit", type=int, help="at most this many jobs (default: the gateway's page size)"
    )
    p.add_argument("--after", help="the last id of the previous page")
    p = command("job", _job, "one video job, any team")
    p.add_argument("id", help="the video job's id (video_...)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="poll until the job is completed or failed, printing each change "
        "(exit 0 completed, 1 failed; Ctrl-C stops waiting)",
    )
    p.add_argument(
        "--interval",
        type=_interval,
        default=WAIT_INTERVAL_S,
        metavar="SECONDS",
        help=f"with --wait: seconds between polls (default: {WAIT_INTERVAL_S:g})",
    )
    p = command("keys", _keys, "upstream keys; 'keys enable ID' / 'keys disable ID'")
    p.add_argument(
        "action",
        nargs="?",
        choices=["list", "enable", "disable"],
        help="list (the default), or enable / disable one key",
    )
    p.add_argument("key_id", nargs="?", help="the upstream key's id (as in the config)")
    p = command("usage", _usage, "who spent what on which model, per day (the ledger)")
    p.add_argument(
        "--from",
        dest="since",
        metavar="DATE",
        help="first day, YYYY-MM-DD (default: the first of this month)",
    )
    p.add_argument("--to", dest="until", metavar="DATE", help="last day (default: today)")
    p.add_argument(
        "--group-by",
        metavar="FIELDS",
        help="comma-separated: team,user,model,tag,day (default: team,user,model)",
    )
    p.add_argument("--team", help="only this team")
    p.add_argument("--csv", action="store_true", help="print the gateway's CSV instead")
    command("reconcile", _reconcile, "the upstream's bill per key against the gateway's charges")
    # Imported here: key_cli builds on this module's client and helpers.
    from gateway.admin.key_cli import add_keys_parser

    add_keys_parser(command)
    p = command("audit", _audit, "recent admin changes, newest first")
    p.add_argument(
        "--limit", type=int, help="at most this many entries (default: the gateway's page size)"
    )
    p.add_argument("--before", help="older than this entry id (the last page's next_before)")
    p.add_argument("--actor", help='only entries whose "team/user" contains this')
    p.add_argument("--team", help="only entries acting on this team or made by its members")
    p.add_argument("--action", help='only actions starting with this, like "limits"')
    admin.set_defaults(func=run)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def _kinds_epilog() -> str:
    width = max(len(k) for k in KINDS)
    lines = [f"  {kind.ljust(width)}  {KIND_UNITS[kind]}" for kind in KINDS]
    return "limit kinds:\n" + "\n".join(lines) + "\n\nnull or unlimited: no limit of that kind"
