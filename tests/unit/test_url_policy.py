"""The address policy behind image_url and followed redirects, IPv4-embedding IPv6 forms most of
all: each one must be judged by the IPv4 address it delivers to."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.settings import SettingsError, settings_from_mapping
from gateway.upstream.address_policy import is_allowed, is_public, parse_networks
from gateway.videos.url_policy import check_image_url

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

NON_PUBLIC_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/29",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
]

non_public_v4 = st.sampled_from(NON_PUBLIC_V4).flatmap(
    lambda net: st.ip_addresses(v=4, network=net)
)
# Python's own table, less the special-purpose blocks the policy refuses on top of it.
_EXTRA_DENY = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))
public_v4 = st.ip_addresses(v=4).filter(
    lambda ip: ip.is_global and not ip.is_multicast and not any(ip in n for n in _EXTRA_DENY)
)
bits = st.integers(min_value=0, max_value=(1 << 80) - 1)


def mapped(v4: V4, _: int) -> V6:
    return V6((0xFFFF << 32) | int(v4))


def compatible(v4: V4, _: int) -> V6:
    return V6(int(v4))


def translated(v4: V4, _: int) -> V6:
    return V6((0xFFFF << 48) | int(v4))


def nat64_well_known(v4: V4, _: int) -> V6:
    return V6((0x64FF9B << 96) | int(v4))


def nat64_local(v4: V4, noise: int) -> V6:
    # 64:ff9b:1::/48: the 48 bits between the prefix and the IPv4 address are the site's own.
    return V6((0x64FF9B0001 << 80) | ((noise & ((1 << 48) - 1)) << 32) | int(v4))


def sixtofour(v4: V4, noise: int) -> V6:
    return V6((0x2002 << 112) | (int(v4) << 80) | noise)


def teredo_server(v4: V4, noise: int) -> V6:
    return _teredo(server=v4, client=V4("93.184.216.34"), noise=noise)


def teredo_client(v4: V4, noise: int) -> V6:
    return _teredo(server=V4("93.184.216.34"), client=v4, noise=noise)


def _teredo(*, server: V4, client: V4, noise: int) -> V6:
    flags_port = noise & 0xFFFFFFFF
    return V6(
        (0x20010000 << 96) | (int(server) << 64) | (flags_port << 32) | (int(client) ^ 0xFFFFFFFF)
    )


FORMS: list[Callable[[V4, int], V6]] = [
    mapped,
    compatible,
    translated,
    nat64_well_known,
    nat64_local,
    sixtofour,
    teredo_server,
    teredo_client,
]
forms = st.sampled_from(FORMS)


@given(non_public_v4, forms, bits)
def test_every_embedding_of_a_non_public_ipv4_is_refused(
    v4: V4, form: Callable[[V4, int], V6], noise: int
) -> None:
    assert not is_public(str(v4))
    assert not is_public(str(form(v4, noise)))


@given(public_v4, forms, bits)
def test_every_embedding_of_a_public_ipv4_is_accepted(
    v4: V4, form: Callable[[V4, int], V6], noise: int
) -> None:
    assert is_public(str(v4))
    assert is_public(str(form(v4, noise)))


@given(non_public_v4, forms, bits)
def test_image_url_refuses_every_embedding_as_literal_and_as_resolved_address(
    v4: V4, form: Callable[[V4, int], V6], noise: int
) -> None:
    v6 = str(form(v4, noise))

    async def resolve(host: str, port: int) -> list[str]:
        return [v6]

    for url in (f"https://[{v6}]/a.png", "https://images.example/a.png"):
        with pytest.raises(InvalidRequest):
            asyncio.run(check_image_url(url, allowed_hosts=(), resolve=resolve))


def test_the_embedding_helpers_match_the_stdlib() -> None:
    v4 = V4("10.1.2.3")
    assert sixtofour(v4, 0).sixtofour == v4
    assert teredo_client(v4, 0).teredo == (V4("93.184.216.34"), v4)
    assert teredo_server(v4, 0).teredo == (v4, V4("93.184.216.34"))
    assert mapped(v4, 0).ipv4_mapped == v4
    assert str(nat64_well_known(v4, 0)) == "64:ff9b::a01:203"


@pytest.mark.parametrize(
    "address",
    [
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::169.254.169.254",
        "64:ff9b:1::10.0.0.1",
        "2002:a9fe:a9fe::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45 (documentation)
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "169.254.169.254",
        "224.0.0.1",
    ],
)
def test_named_non_public_addresses(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34", "2002:5db8:d822::"]
)
def test_named_public_addresses(address: str) -> None:
    assert is_public(address)


def test_trusted_networks_allow_their_addresses_and_only_theirs() -> None:
    trusted = parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert is_allowed("127.0.0.1", trusted)
    assert is_allowed("::ffff:127.0.0.1", trusted)  # the same destination on a dual-stack host
    assert is_allowed("fd00::5", trusted)
    assert not is_allowed("10.0.0.1", trusted)
    assert not is_allowed("169.254.169.254", trusted)
    assert is_allowed("93.184.216.34", trusted)
    assert not is_allowed("127.0.0.1")


@pytest.mark.parametrize("spec", ["10.0.0.1/8", "not-a-network", "300.0.0.0/8", ""])
def test_bad_trusted_network_is_an_error(spec: str) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        parse_networks([spec])


def _settings_doc(trusted: object) -> dict[str, object]:
    return {
        "auth": {"hs256_secrets": [secrets.token_urlsafe(40)]},
        "upstream": {"trusted_networks": trusted},
    }


def test_trusted_networks_setting_is_parsed_and_normalised() -> None:
    s = settings_from_mapping(_settings_doc(["127.0.0.0/8", "FD00::/8"]), {})
    assert s.upstream.trusted_networks == ("127.0.0.0/8", "fd00::/8")
    assert settings_from_mapping(
        _settings_doc("10.0.0.0/8, 192.168.0.0/16"), {}
    ).upstream.trusted_networks == ("10.0.0.0/8", "192.168.0.0/16")
    assert settings_from_mapping(_settings_doc(None), {}).upstream.trusted_networks == ()


@pytest.mark.parametrize("bad", [["10.0.0.1/8"], ["cdn.internal"], [42]])
def test_a_bad_trusted_network_names_the_key(bad: object) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(_settings_doc(bad), {})
    assert info.value.key == "upstream.trusted_networks"


@pytest.mark.parametrize(
    "url",
    [
        "https://[::127.0.0.1]/a.png",
        "https://[64:ff9b::a9fe:a9fe]/a.png",
        "https://[2002:7f00:1::]/a.png",
    ],
)
async def test_image_url_with_an_embedding_literal_is_refused(url: str) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("a literal must not be resolved")

    with pytest.raises(InvalidRequest) as info:
        await check_image_url(url, allowed_hosts=(), resolve=resolve)
    assert info.value.code == "invalid_url"


async def test_image_url_resolving_to_an_embedding_form_is_refused() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["64:ff9b::7f00:1"]

    with pytest.raises(InvalidRequest):
        await check_image_url("https://images.example/a.png", allowed_hosts=(), resolve=resolve)


@pytest.mark.parametrize("address", ["fec0::1", "192.0.0.8", "192.0.0.170", "192.88.99.1"])
def test_special_purpose_blocks_python_calls_global_are_refused(address: str) -> None:
    assert not is_public(address)
