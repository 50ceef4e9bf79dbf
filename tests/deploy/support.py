"""Helpers for the deployment tests: paths, loaders, environment references, PromQL names."""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from gateway.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SRC = ROOT / "gateway"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
# At the context root: the only place the classic builder reads, and BuildKit's fallback.
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS_LOCK = DEPLOY / "requirements.lock"
BUILD_LOCK = DEPLOY / "build-requirements.lock"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_GATEWAY_CONFIG = DEPLOY / "gateway.compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
PLACEHOLDER = "REPLACE_ME"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML/JSON document (keys excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)


# -- the environment the gateway reads --------------------------------------------------------

# os.environ.get("X"), os.environ["X"], env.get("X"), env["X"], os.getenv("X") in gateway/;
# not assignments (env["X"] = ...: development mode hands values to the workers that way).
_PY_ENV = re.compile(
    r"""(?:\benviron|\benv)(?:\.get\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=]))"""
    r"""|\bgetenv\(\s*["']([A-Z][A-Z0-9_]*)["']"""
)
# ${NAME} and ${NAME:-default}, as gateway.settings.interpolate expands them.
_CONFIG_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def python_env_reads() -> set[str]:
    """Environment variables the gateway's code reads by name."""
    names: set[str] = set()
    for path in GATEWAY_SRC.rglob("*.py"):
        for m in _PY_ENV.finditer(path.read_text()):
            names.add(next(g for g in m.groups() if g))
    return names


def config_env_refs(doc: Any) -> dict[str, bool]:
    """``${NAME}`` references in a parsed gateway config: name -> required (no default)."""
    refs: dict[str, bool] = {}
    for s in strings(doc):
        for m in _CONFIG_REF.finditer(s):
            refs[m.group(1)] = refs.get(m.group(1), False) or m.group(2) is None
    return refs


def env_read_by(config_doc: Any) -> set[str]:
    """What a gateway running with this config reads: its code's names plus the config's."""
    return python_env_reads() | set(config_env_refs(config_doc))


# -- settings ---------------------------------------------------------------------------------


def drain_seconds(doc: Any) -> float:
    """The drain time a gateway with this config gives in-flight requests on SIGTERM."""
    default = next(f.default for f in fields(ServerSettings) if f.name == "drain_seconds")
    return float((doc.get("server") or {}).get("drain_seconds", default))


# -- docker compose ---------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def compose_vars(doc: Any) -> dict[str, bool]:
    """Variables compose interpolates into this file: name -> required (``:?``/``?``)."""
    out: dict[str, bool] = {}
    for s in strings(doc):
        for m in _COMPOSE_VAR.finditer(s):
            if m.group(0) == "$$":
                continue
            name = m.group(1) or m.group(4)
            out[name] = out.get(name, False) or (m.group(2) or "").endswith("?")
    return out


def compose_interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one value; a missing required variable raises KeyError."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3) or ""
        got = env.get(name)
        if op == ":-":
            return got or arg
        if op == "-":
            return arg if got is None else got
        if op in (":?", "?") and (got is None or (op == ":?" and not got)):
            raise KeyError(f"{name}: {arg}")
        return got or ""

    return _COMPOSE_VAR.sub(repl, value)


def without_compose_refs(value: str) -> str:
    """A value with every ``${VAR...}``/``$VAR`` reference (and ``$$``) taken out: what is
    written in the file itself."""
    return _COMPOSE_VAR.sub("", value)


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """``NAME=value`` lines, and the names only mentioned as commented-out ``# NAME=...``."""
    active: dict[str, str] = {}
    optional: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if m := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line):
            optional.add(m.group(1))
        elif line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            active[name.strip()] = value.strip()
    return active, optional


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def gateway_services(compose: Mapping[str, Any]) -> dict[str, Any]:
    """The compose services built from deploy/Dockerfile."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if isinstance(svc.get("build"), dict)
        and svc["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def healthcheck_url(test: Any) -> str:
    """The URL a healthcheck command fetches."""
    text = test if isinstance(test, str) else " ".join(str(t) for t in test)
    m = re.search(r"https?://[^'\"\s]+", text)
    assert m, f"no URL in healthcheck {text!r}"
    return m.group(0)


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON) or shell-form instruction."""
    args = args.strip()
    if args.startswith("["):
        return [str(a) for a in json.loads(args)]
    return shlex.split(args)


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def base_images() -> list[str]:
    """Every stage's FROM, with the ARG defaults filled in (a stage name is not a base)."""
    ins = dockerfile_instructions()
    args = dict(a.partition("=")[::2] for w, a in ins if w == "ARG" and "=" in a)
    stages: set[str] = set()
    bases = []
    for word, rest in ins:
        if word != "FROM":
            continue
        words = rest.split()
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
        if image not in stages:
            bases.append(image)
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return bases


def copy_sources() -> list[str]:
    """What the Dockerfile's COPY instructions take from the build context."""
    sources: list[str] = []
    for word, args in dockerfile_instructions():
        words = args.split()
        if word == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def entrypoint() -> list[str]:
    return exec_form(next(a for w, a in reversed(final_stage()) if w == "ENTRYPOINT"))


def listen_port() -> int:
    """The port the image's gateway listens on (--port overrides server.port)."""
    port = option(entrypoint(), "--port") or load_yaml(COMPOSE_GATEWAY_CONFIG)["server"]["port"]
    return int(port)


# -- PromQL -----------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "group_left", "group_right"}
)


def promql_metrics(expr: str) -> set[str]:
    """Metric (series) names a PromQL expression selects; functions and labels excluded."""
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", _blank_strings(expr))
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, incl. Grafana's [$__rate_interval]
    text = _LABEL_LIST.sub(" ", text)
    return {
        m.group(1)
        for m in _IDENT.finditer(text)
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS
    }


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every ``name{...}`` selector."""
    out = []
    for m in _SELECTOR.finditer(_blank_strings(expr)):
        out.append((m.group(1) or "", set(_MATCHER_LABEL.findall(m.group(2)))))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_left/group_right clauses."""
    labels: set[str] = set()
    for m in _LABEL_LIST.finditer(_blank_strings(expr)):
        labels |= {s.strip() for s in m.group(2).split(",") if s.strip()}
    return labels


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


# -- the gateway as these files run it ---------------------------------------------------------


def compose_dotenv() -> dict[str, str]:
    """deploy/env.example's values: what an operator's deploy/.env looks like."""
    active, _ = read_env_file(ENV_EXAMPLE)
    return active


def compose_gateway_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A gateway container's environment with env.example's values filled in."""
    dotenv = compose_dotenv()
    return {k: compose_interpolate(v, dotenv) for k, v in service_env(service).items()}


@functools.cache
def gateway_paths() -> frozenset[str]:
    """The paths the gateway app actually routes (built from the compose config)."""
    from gateway.app import create_app
    from gateway.settings import settings_from_mapping

    compose = load_yaml(COMPOSE_FILE)
    service = next(iter(gateway_services(compose).values()))
    settings = settings_from_mapping(
        load_yaml(COMPOSE_GATEWAY_CONFIG), compose_gateway_env(service)
    )
    app = create_app(settings).asgi
    return frozenset(str(getattr(r, "path", "")) for r in app.routes)


def seconds(value: Any) -> float:
    """``40``, ``"40s"``, ``"1m30s"`` -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(value))
    assert parts, f"not a duration: {value!r}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)
