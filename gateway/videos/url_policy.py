"""Which image URLs a caller may ask the upstream to fetch.

https only, no credentials in the URL, an optional host allowlist, and, after DNS resolution,
no private, loopback, link-local, multicast or reserved address (the cloud metadata address
169.254.169.254 among them, and IPv6 forms that embed one). Without this, a caller could make the
upstream — or any service that later follows the URL — reach into our network. The address rules
live in ``gateway.upstream.address_policy``, shared with the download redirects we follow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from gateway.errors import InvalidRequest
from gateway.upstream.address_policy import is_public

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT = 2.0  # seconds; a create must not hang on a slow resolver


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_url", param="image_url")


async def check_image_url(
    url: str,
    *,
    allowed_hosts: Sequence[str],
    resolve: Resolver = system_resolver,
) -> None:
    """Raise InvalidRequest (400, ``invalid_url``) unless the URL is safe to hand upstream."""
    if len(url) > MAX_URL_CHARS:
        raise _refuse("image_url is too long.")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise _refuse("image_url is not a valid URL.") from None
    if parts.scheme != "https":
        raise _refuse("image_url must be an https URL.")
    host = (parts.hostname or "").lower()
    if not host or parts.username or parts.password:
        raise _refuse("image_url must name a host and carry no credentials.")
    if allowed_hosts and not any(host == h or host.endswith("." + h) for h in allowed_hosts):
        raise _refuse("image_url's host is not allowed.")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                addresses = list(await resolve(host, port))
        except (OSError, TimeoutError):
            raise _refuse("image_url's host does not resolve.") from None
    if not addresses or not all(is_public(a) for a in addresses):
        raise _refuse("image_url must point to a public address.")
