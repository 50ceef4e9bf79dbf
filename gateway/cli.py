"""Command line: gateway serve | sim | token | check-config | admin (also python -m gateway)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway import __version__
from gateway.admin.cli import add_admin_parser
from gateway.observability.metrics import MULTIPROC_ENV
from gateway.settings import (
    ConfigFileError,
    Settings,
    SettingsError,
    audience_warnings,
    cleartext_warnings,
    load_settings,
    production_problems,
)


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


def _local_url(host: str, port: int) -> str:
    """Where a browser or the admin CLI on this machine reaches a listener on host:port."""
    name = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, or None. Binds (and closes) a socket
    for every address the name resolves to, with the options asyncio's server uses."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot listen on {host!r}: {exc.strerror}"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} on {host} is already in use"
                return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def _free_port_near(host: str, port: int) -> int | None:
    return next((p for p in range(port + 1, port + 21) if listen_problem(host, p) is None), None)


def _port_taken(host: str, port: int, problem: str, *, dev: bool) -> int:
    print(f"gateway: cannot start: {problem}; nothing was started", file=sys.stderr)
    other = _free_port_near(host, port) if "in use" in problem else None
    n = str(other) if other is not None else "N"
    if dev:
        hint = f'make run ARGS="--port {n}" (or gateway serve --dev ... --port {n})'
    else:
        hint = f"--port {n}, or server.port in the config"
    print(f"gateway: to listen on another port: {hint}", file=sys.stderr)
    return 2


def _print_config_error(exc: SettingsError) -> None:
    for e in exc.errors:
        print(f"gateway: config error: {e}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.auth.tokens import mint_token
    from gateway.dev.services import DevModeError, DevServices, dev_settings, start_dev_services
    from gateway.web.factory import LISTEN_HOST_ENV, LISTEN_PORT_ENV
    from gateway.web.protocol import HeadLimits, protocol_factory

    env = os.environ
    if args.config:
        env["GATEWAY_CONFIG"] = os.path.abspath(args.config)
    services = DevServices()
    try:
        # Checks that need nothing started come first: a second `make run` must stop before
        # it starts another embedded Redis on the same data directory.
        settings = dev_settings(args.config, env) if args.dev else load_settings(args.config)
        _check_keys(settings)
        host = args.host or settings.server.host
        port = args.port if args.port is not None else settings.server.port
        if not args.dev and not _startable(settings):
            return 2
        problem = listen_problem(host, port)
        if problem:
            return _port_taken(host, port, problem, dev=args.dev)
        if args.dev:
            services = start_dev_services(args.config, env)
            settings = load_settings(args.config)
            _check_keys(settings)
            if not _startable(settings):
                return 2
        for warning in cleartext_warnings(settings) + audience_warnings(settings):
            print(f"gateway: warning: {warning}", file=sys.stderr)
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
            _banner(services.notes, host, port, token, console=settings.console.active)
            # uvicorn re-raises SIGTERM once it has shut down; by default that kills the
            # process before the `finally` below stops the embedded Redis and the simulator.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # The workers load the config themselves: tell them what the command line changed.
        env[LISTEN_HOST_ENV], env[LISTEN_PORT_ENV] = host, str(port)
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
        _print_config_error(exc)
        return 2
    except DevModeError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    finally:
        services.stop()


def _startable(settings: Settings) -> bool:
    problems = production_problems(settings)
    for p in problems:
        print(f"gateway: cannot start: {p}", file=sys.stderr)
    if problems:
        print("gateway: (for a local run with fallbacks use make run)", file=sys.stderr)
    return not problems


def _banner(notes: Sequence[str], host: str, port: int, token: str, *, console: bool) -> None:
    line = "=" * 78
    url = _local_url(host, port)
    print(line)
    print(f"Crazyrouter gateway (development mode) on {url}")
    for n in notes:
        print(f"  * {n}")
    print(f'  * Port {port}; for another one: make run ARGS="--port {port + 1}"')
    if console:
        print(f"  * Web console: {url}/console (sign in with the token below)")
    print("\nDevelopment token (team 'dev', admin role, valid 24 h):\n")
    print(token)
    print("\nFor the admin CLI (.venv/bin/gateway admin teams, ...) in another shell:\n")
    print(f"export GATEWAY_URL={url}")
    print(f"export GATEWAY_ADMIN_TOKEN={token}")
    print("\nTry it with the OpenAI SDK (pip install openai):\n")
    print("from openai import OpenAI")
    print(f'client = OpenAI(base_url="{url}/v1", api_key="{token}")')
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
        _print_config_error(exc)
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
    from gateway.dev.services import dev_fallbacks, dev_settings

    path = args.path
    try:
        settings = dev_settings(path, os.environ) if args.dev else load_settings(path)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    except SettingsError as exc:
        for e in exc.errors:
            print(f"{path}: {e}", file=sys.stderr)
        return 1
    errors: list[str] = []
    try:
        _check_keys(settings)
    except SettingsError as exc:
        errors.append(str(exc))
    if not args.dev:
        errors += production_problems(settings)
    warnings = cleartext_warnings(settings) + audience_warnings(settings)
    for problem in errors:
        print(f"{path}: {problem}", file=sys.stderr)
    for w in warnings:
        print(f"{path}: warning: {w}", file=sys.stderr)
    if errors:
        return 1
    if warnings and args.strict:
        print(f"{path}: --strict: warnings count as errors", file=sys.stderr)
        return 1
    summary = f"{len(settings.upstream.keys)} upstream keys"
    if args.dev:
        fallbacks = dev_fallbacks(settings, os.environ)
        summary += "; development fallbacks: " + (", ".join(fallbacks) or "none")
    print(f"{path}: OK ({summary})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"gateway {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these (gateway COMMAND --help for its options)",
    )

    serve = sub.add_parser(
        "serve",
        help="serve the gateway",
        description="Serve the gateway. make run is: gateway serve --dev --config config/dev.yaml",
    )
    serve.add_argument("--config", help="YAML config file (default: environment only)")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument(
        "--port",
        type=int,
        help='listen port (default: server.port); with make run: make run ARGS="--port 8081"',
    )
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development fallbacks: embedded Redis, the simulator as upstream, a generated "
        "JWT secret (what make run uses)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default: info)",
    )
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("sim", help="run the Crazyrouter simulator")
    sim.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8090, help="listen port (default: 8090)")
    sim.add_argument("--keys", help="accepted keys, comma separated (or GATEWAY_SIM_KEYS)")
    sim.add_argument(
        "--shape",
        choices=["page", "envelope", "openai"],
        default="page",
        help="the video API dialect to answer in (default: page)",
    )
    sim.add_argument(
        "--job-seconds",
        type=float,
        default=3.0,
        help="how long a video job takes to complete (default: 3)",
    )
    sim.add_argument(
        "--content-bytes",
        type=int,
        default=1_000_000,
        help="size of a finished video's content (default: 1000000)",
    )
    sim.set_defaults(func=_sim)

    token = sub.add_parser("token", help="mint an HS256 token (GATEWAY_JWT_SECRET or --config)")
    token.add_argument("--team", required=True, help="the team claim")
    token.add_argument("--user", required=True, help="the user claim")
    token.add_argument("--roles", default="", help="roles, comma separated")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    token.add_argument(
        "--config", help="take the secret, issuer, audience and claim names from this config"
    )
    token.set_defaults(func=_token)

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file without starting anything. Every problem is "
        "printed as PATH: key: problem; exit 1 if there is any. Cleartext http URLs off this "
        "machine are warnings (exit 0 unless --strict).",
    )
    check.add_argument("path", help="the YAML config file")
    check.add_argument(
        "--dev",
        action="store_true",
        help="with the fallbacks of serve --dev: no upstream key, Redis or JWT secret needed",
    )
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.set_defaults(func=_check_config)

    add_admin_parser(sub)  # gateway admin ...: the admin API's client (gateway/admin/cli.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
