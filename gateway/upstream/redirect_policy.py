"""Where a download redirect may send the gateway.

The upstream (or whoever controls a location it hands out) chooses the redirect target, and the
gateway then streams whatever answers there to a caller: without a check, a redirect to
169.254.169.254 or a loopback admin port would turn the content route into a window on our
network. A hop to the upstream's own origin is trusted like the upstream; any other must reach
only addresses ``address_policy`` allows.

The check runs where the connection is made: ``PolicyResolver`` judges the addresses aiohttp is
about to connect to, so a name cannot resolve to a public address for a check and to a private
one for the connection (DNS rebinding). aiohttp never asks a resolver about an IP literal, so
``check_target`` judges literals itself, before any connection.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from gateway.errors import UpstreamError
from gateway.upstream.address_policy import IPNetwork, is_allowed, parse_address


class AddressRefused(OSError):
    """A name resolved to an address the gateway must not connect to (raised inside aiohttp)."""


def redirect_refused() -> UpstreamError:
    # The caller learns that we refused, never where the upstream tried to send us.
    return UpstreamError(
        "The upstream redirected the download to a location the gateway does not follow.",
        code="upstream_redirect_refused",
        status=502,
    )


def _looks_numeric(host: str) -> bool:
    # Forms like 2130706433 or 127.1 that some resolvers map onto an address.
    return ":" in host or host.rstrip(".").replace(".", "").isdigit()


def check_target(target: URL, trusted: Sequence[IPNetwork]) -> None:
    """Refuse a cross-origin hop before connecting: credentials, or a disallowed IP literal.
    Names are judged later, by ``PolicyResolver``, on the addresses actually connected to."""
    host = target.host
    if not host or target.user is not None or target.password is not None:
        raise redirect_refused()
    try:
        address = parse_address(host)
    except ValueError:
        if _looks_numeric(host):
            raise redirect_refused() from None
        return
    if not is_allowed(address, trusted):
        raise redirect_refused()


class PolicyResolver(AbstractResolver):
    """aiohttp's own resolver, refusing every name but the upstream's unless all the addresses
    it resolves to are allowed. One disallowed address refuses the name, as for image_url: a
    name that mixes public and private addresses is a rebinding setup, not a CDN."""

    def __init__(self, upstream: tuple[str, int], trusted: Sequence[IPNetwork]) -> None:
        self._inner = DefaultResolver()
        self._upstream = upstream
        self._trusted = tuple(trusted)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if (host.lower(), port) == self._upstream:
            return results
        if not results or not all(is_allowed(r["host"], self._trusted) for r in results):
            raise AddressRefused("the name resolves to an address the gateway does not reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


def upstream_endpoint(base_url: str) -> tuple[str, int]:
    """The (host, port) the upstream's own connections go to, as aiohttp will ask for them."""
    url = URL(base_url)
    return (url.raw_host or "").lower(), url.port or 0
