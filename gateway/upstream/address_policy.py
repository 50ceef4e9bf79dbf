"""Which network addresses the gateway may make anyone connect to (pure).

One policy for every address the gateway did not choose itself: a caller's ``image_url`` and a
download redirect that leaves the upstream's origin. Public unicast only; private, loopback,
link-local (the cloud metadata address 169.254.169.254 among them), multicast and reserved
addresses are refused. IPv6 forms that carry an IPv4 address are judged by that IPv4 address,
because a dual-stack host, a NAT64 gateway or a 6to4/Teredo relay delivers them there:
``ipaddress`` calls ``::127.0.0.1`` and ``64:ff9b::10.0.0.1`` global, which would let them
through. Operators may name trusted networks (an internal CDN) whose addresses are allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # RFC 6052 well-known prefix
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # RFC 8215 local-use prefix
)
# RFC 2765 "IPv4-translated" (::ffff:0:a.b.c.d): SIIT translators deliver it to the IPv4 address.
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_LOW32 = 0xFFFFFFFF


def parse_address(address: str) -> IPAddress:
    """An address as a resolver or URL gives it (zone id allowed). Raises ValueError."""
    return ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings to networks. Raises ValueError naming the bad one."""
    out: list[IPNetwork] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=True))
        except ValueError:
            raise ValueError(f"not a CIDR network: {spec!r}") from None
    return tuple(out)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address delivers to, or () when it embeds none."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    n = int(ip)
    if n >> 32 == 0:
        # IPv4-compatible ::a.b.c.d; :: and ::1 are themselves (unspecified, loopback).
        return (ipaddress.IPv4Address(n),) if n > 1 else ()
    if ip in _TRANSLATED or any(ip in net for net in _NAT64):
        return (ipaddress.IPv4Address(n & _LOW32),)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client): a relay talks to both
    return ()


# Not public although some Python versions' tables call them global: deprecated IPv6
# site-local, the IPv4 special-purpose block 192.0.0.0/24 (192.0.0.8, ...) and the retired
# 6to4 relay anycast 192.88.99.0/24.
_NOT_PUBLIC = (
    ipaddress.ip_network("fec0::/10"),
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("192.88.99.0/24"),
)


def _global(ip: IPAddress) -> bool:
    if any(ip.version == net.version and ip in net for net in _NOT_PUBLIC):
        return False
    return ip.is_global and not ip.is_multicast


def is_public(address: str | IPAddress) -> bool:
    """Public unicast, judging IPv4-embedding IPv6 forms by every IPv4 address they carry."""
    ip = parse_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded:
            return all(_global(v4) for v4 in embedded)
    return _global(ip)


def is_allowed(address: str | IPAddress, trusted: Sequence[IPNetwork] = ()) -> bool:
    """Public, or inside one of the operator's trusted networks."""
    ip = parse_address(address) if isinstance(address, str) else address
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)  # the same socket destination on a dual-stack host
    if any(c in net for c in candidates for net in trusted):
        return True
    return is_public(ip)
