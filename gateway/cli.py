"""Command line: ``gateway serve | sim | token | check-config | admin`` (also
``python -m gateway``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway.admin.cli import add_admin_parser
from gateway.observability.metrics import MULTIPROC_ENV
from gateway.settings import Settings, SettingsError, load_settings, production_problems


def _check_keys(settings: Settings) -> None:
    """Key material problems the settings parser cannot see (RSA size, EC curve, HS length)."""
    from gateway.auth.verifier import TokenVerifier

    try:
        TokenVerifier(settings.auth)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        raise SettingsError(key, problem or str(exc)) from None


def prepare_metrics_dir(configured: str | None) -> str:
    """The multi-worker metrics directory, emptied: counts from an earlier run must not add in."""
    if configured is None:
        return tempfile.mkdtemp(prefix="gateway-metrics-")
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return str(path)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.auth.tokens import mint_token
    from gateway.dev.services import DevServices, start_dev_services
    from gateway.web.protocol import HeadLimits, protocol_factory

    env = os.environ
    if args.config:
        env["GATEWAY_CONFIG"] = os.path.abspath(args.config)
    services = DevServices()
    try:
        if args.dev:
            services = start_dev_services(args.config, env)
        settings = load_settings(args.config)
        _check_keys(settings)
        problems = production_problems(settings)
        if problems:
            for p in problems:
                print(f"gateway: cannot start: {p}", file=sys.stderr)
            print("gateway: (for a local run with fallbacks use `make run`)", file=sys.stderr)
            return 2
        host = args.host or settings.server.host
        port = args.port if args.port is not None else settings.server.port
        workers = args.workers or settings.server.workers
        if args.dev:
            token = mint_token(
                settings.auth.hs256_secrets[0],
                team="dev",
                user="developer",
                roles=[settings.auth.admin_role],
                ttl_seconds=24 * 3600,
                team_claim=settings.auth.team_claim,
                roles_claim=settings.auth.roles_claim,
                issuer=settings.auth.issuer,
                audience=settings.auth.audience,
            )
            _banner(services.notes, host, port, token)
        if args.dev:
            # uvicorn re-raises SIGTERM once it has shut down; by default that kills the
            # process before the `finally` below stops the embedded Redis and the simulator.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if workers > 1:
            # Before the workers start: each one's metrics go to files a scrape adds up.
            env[MULTIPROC_ENV] = prepare_metrics_dir(settings.server.metrics_dir)
        uvicorn.run(
            "gateway.web.factory:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop=settings.server.loop,
            http=protocol_factory(HeadLimits.of(settings.server)),
            log_level=args.log_level,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # client addresses are not used; the middleware costs ~5 %
            # On SIGTERM: stop accepting, give in-flight requests and downloads this long.
            timeout_graceful_shutdown=max(1, round(settings.server.drain_seconds)),
        )
        return 0
    except SettingsError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    finally:
        services.stop()


def _banner(notes: Sequence[str], host: str, port: int, token: str) -> None:
    line = "=" * 78
    print(line)
    print(f"Crazyrouter gateway (development mode) on http://{host}:{port}")
    for n in notes:
        print(f"  * {n}")
    print("\nDevelopment token (team 'dev', admin role, valid 24 h):\n")
    print(token)
    print("\nTry it with the OpenAI SDK (pip install openai):\n")
    print("from openai import OpenAI")
    print(f'client = OpenAI(base_url="http://{host}:{port}/v1", api_key="{token}")')
    print(
        'print(client.chat.completions.create(model="gpt-4o-mini", '
        'messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)'
    )
    print(line, flush=True)


def _sim(args: argparse.Namespace) -> int:
    from gateway.sim.config import SimConfig
    from gateway.sim.server import serve

    keys = tuple(k for k in (args.keys or os.environ.get("GATEWAY_SIM_KEYS", "")).split(",") if k)
    config = SimConfig(
        keys=keys or SimConfig().keys,
        shape=args.shape,
        job_seconds=args.job_seconds,
        content_bytes=args.content_bytes,
    )
    serve(args.host, args.port, config)
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.auth.tokens import mint_token

    secret = os.environ.get("GATEWAY_JWT_SECRET", "")
    issuer = audience = None
    team_claim, roles_claim = "team", "roles"
    try:
        if args.config:
            settings = load_settings(args.config)
            a = settings.auth
            secret = secret or (a.hs256_secrets[0] if a.hs256_secrets else "")
            issuer, audience = a.issuer, a.audience
            team_claim, roles_claim = a.team_claim, a.roles_claim
    except SettingsError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    if len(secret.encode()) < 32:
        print("gateway: set GATEWAY_JWT_SECRET (>= 32 bytes) or pass --config", file=sys.stderr)
        return 2
    print(
        mint_token(
            secret,
            team=args.team,
            user=args.user,
            roles=[r for r in args.roles.split(",") if r],
            ttl_seconds=args.ttl,
            issuer=issuer,
            audience=audience,
            team_claim=team_claim,
            roles_claim=roles_claim,
        )
    )
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.path)
        _check_keys(settings)
    except SettingsError as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 1
    problems = [] if args.dev else production_problems(settings)
    for p in problems:
        print(f"{args.path}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.path}: OK ({len(settings.upstream.keys)} upstream keys)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help="YAML config file (default: environment only)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--dev", action="store_true", help="development fallbacks (make run)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("sim", help="run the Crazyrouter simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--keys", help="accepted keys, comma separated (or GATEWAY_SIM_KEYS)")
    sim.add_argument("--shape", choices=["page", "envelope", "openai"], default="page")
    sim.add_argument("--job-seconds", type=float, default=3.0)
    sim.add_argument("--content-bytes", type=int, default=1_000_000)
    sim.set_defaults(func=_sim)

    token = sub.add_parser("token", help="mint an HS256 token (GATEWAY_JWT_SECRET or --config)")
    token.add_argument("--team", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--roles", default="", help="comma separated")
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument("--config")
    token.set_defaults(func=_token)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("path")
    check.add_argument("--dev", action="store_true", help="allow development fallbacks")
    check.set_defaults(func=_check_config)

    add_admin_parser(sub)  # gateway admin ...: the admin API's client (gateway/admin/cli.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
