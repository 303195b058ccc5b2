"""Unit tests for relay.verify: client addresses, allowlists and every verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from email.utils import formatdate

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import AuthenticationFailed, Forbidden
from relay.settings import Secret
from relay.verify import (
    AllOf,
    BasicAuthVerifier,
    ClientAddresses,
    IPAllowlist,
    MessageMediaVerifier,
    Request,
    StandardWebhooksVerifier,
    TokenVerifier,
    client_address,
    load_rsa_public_key,
    parse_ip,
)

NOW = 1_740_823_205.0  # 2025-03-01T10:00:05Z

TRUSTED = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("fd00::/8"),
)


def req(headers: Mapping[str, str] | None = None, body: bytes = b"{}", *, token: str | None = None,
        method: str = "POST", path: str = "/hooks/src", query: str = "",
        http_version: str = "1.1") -> Request:  # fmt: skip
    """A Request with lower-case headers."""
    return Request(method=method, path=path, query=query, headers=dict(headers or {}), body=body,
                   token=token, http_version=http_version)  # fmt: skip


def basic(user: str | bytes, password: str | bytes) -> str:
    """An Authorization header value for HTTP Basic."""
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return "Basic " + base64.b64encode(u + b":" + p).decode()


# --- Request ----------------------------------------------------------------------------------


def test_request_line_with_and_without_query() -> None:
    """request_line joins method, path, query and HTTP version as the client sent them."""
    assert req().request_line == "POST /hooks/src HTTP/1.1"
    assert req(query="a=1&b=2").request_line == "POST /hooks/src?a=1&b=2 HTTP/1.1"
    assert req(method="PUT", http_version="2").request_line == "PUT /hooks/src HTTP/2"


# --- parse_ip / client_address ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("2001:DB8::0001", "2001:db8::1"),
        ("1.2.3.4:80", None),
        ("example.com", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ip(text: str | None, expected: str | None) -> None:
    """parse_ip accepts plain, bracketed and zoned addresses and rejects anything else."""
    ip = parse_ip(text)
    assert (None if ip is None else str(ip)) == expected


def test_client_address_without_forwarded_for_is_peer() -> None:
    """With no X-Forwarded-For the peer address is the client."""
    assert client_address("203.0.113.9", None, TRUSTED) == "203.0.113.9"
    assert client_address("10.0.0.1", "", TRUSTED) == "10.0.0.1"


def test_client_addresses_answer_as_client_address_does() -> None:
    """The memoised resolver gives client_address's answer for each peer and header, asked
    twice, and each instance uses its own trusted proxies."""
    trusting, untrusting = ClientAddresses(TRUSTED), ClientAddresses(())
    for _ in range(2):
        assert trusting.resolve("10.0.0.1", "198.51.100.7") == "198.51.100.7"
        assert trusting.resolve("10.0.0.1", "198.51.100.8") == "198.51.100.8"
        assert trusting.resolve("10.0.0.1", None) == "10.0.0.1"
        assert untrusting.resolve("10.0.0.1", "198.51.100.7") == "10.0.0.1"


def test_client_address_ignores_forwarded_for_from_untrusted_peer() -> None:
    """X-Forwarded-For from a peer that is not a trusted proxy is ignored."""
    assert client_address("203.0.113.9", "198.51.100.7", TRUSTED) == "203.0.113.9"
    assert client_address("203.0.113.9", "198.51.100.7", ()) == "203.0.113.9"


def test_client_address_honours_forwarded_for_from_trusted_peer() -> None:
    """From a trusted proxy, the right-most hop is the client."""
    assert client_address("10.0.0.1", "198.51.100.7", TRUSTED) == "198.51.100.7"


def test_client_address_skips_trusted_hops_from_the_right() -> None:
    """Trusted proxies in the chain are skipped, right to left, to the first untrusted hop."""
    chain = "198.51.100.7, 10.1.1.1, 127.0.0.1"
    assert client_address("10.0.0.1", chain, TRUSTED) == "198.51.100.7"


def test_client_address_cannot_be_spoofed_from_the_left() -> None:
    """Addresses a client prepends to the chain are not taken as the client."""
    chain = "10.9.9.9, 1.1.1.1, 198.51.100.7, 10.1.1.1"
    assert client_address("10.0.0.1", chain, TRUSTED) == "198.51.100.7"


def test_client_address_all_hops_trusted_gives_left_most() -> None:
    """When every hop is a trusted proxy the left-most one is the client."""
    assert client_address("10.0.0.1", "10.0.0.3, 10.0.0.2", TRUSTED) == "10.0.0.3"


@pytest.mark.parametrize("chain", ["garbage", "198.51.100.7, unknown", "198.51.100.7,",
                                   "1.2.3.4:5678"])  # fmt: skip
def test_client_address_malformed_right_most_hop_falls_back_to_peer(chain: str) -> None:
    """A malformed right-most hop means the chain is not trusted: the peer is the client."""
    assert client_address("10.0.0.1", chain, TRUSTED) == "10.0.0.1"


def test_client_address_ipv6_and_mapped_peers() -> None:
    """IPv6 peers are trusted by IPv6 networks, IPv4-mapped peers by IPv4 networks."""
    assert client_address("fd00::5", "2001:db8::9", TRUSTED) == "2001:db8::9"
    assert client_address("::ffff:127.0.0.1", "198.51.100.7", TRUSTED) == "198.51.100.7"
    assert client_address("[::ffff:8.8.8.8]", "198.51.100.7", TRUSTED) == "::ffff:808:808"


def test_client_address_non_ip_peer_is_returned_as_is() -> None:
    """A peer that is not an IP (a unix socket) is returned unchanged; None becomes ''."""
    assert client_address("unix:/run/relay.sock", "1.2.3.4", TRUSTED) == "unix:/run/relay.sock"
    assert client_address(None, "1.2.3.4", TRUSTED) == ""


def _is_trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` (IPv4-mapped counted as IPv4) is inside one of TRUSTED."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in TRUSTED)


_hop = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.1", "127.0.0.1", "fd00::1", " 10.2.3.4 ", "[fd00::2]", ""]),
    st.text(max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(
    peer=st.one_of(st.none(), st.sampled_from(["10.0.0.1", "127.0.0.1", "fd00::1",
                                               "203.0.113.5", "::ffff:10.0.0.1"]),
                   st.ip_addresses().map(str), st.text(max_size=20)),
    header=st.one_of(st.none(), st.text(max_size=60),
                     st.lists(_hop, max_size=6).map(", ".join)),
)
def test_client_address_property(peer: str | None, header: str | None) -> None:
    """client_address never raises and returns the peer or an address taken from the header."""
    result = client_address(peer, header, TRUSTED)
    allowed = {peer or ""}
    peer_ip = parse_ip(peer)
    if peer_ip is not None:
        allowed.add(str(peer_ip))
    for hop in (header or "").split(","):
        hop_ip = parse_ip(hop)
        if hop_ip is not None:
            allowed.add(str(hop_ip))
    assert result in allowed
    if peer_ip is not None and not _is_trusted(peer_ip):
        assert result == str(peer_ip)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=10)), max_size=4),
    client=st.ip_addresses(v=4).filter(lambda ip: not ip.is_private),
    proxies=st.lists(st.sampled_from(["10.0.0.2", "10.9.8.7", "127.0.0.1"]), max_size=3),
)
def test_client_address_left_part_of_chain_is_never_trusted(
    prefix: list[str], client: ipaddress.IPv4Address, proxies: list[str]
) -> None:
    """Whatever the client writes into X-Forwarded-For, the first untrusted hop wins."""
    header = ", ".join([*prefix, str(client), *proxies])
    assert client_address("10.0.0.1", header, TRUSTED) == str(client)


# --- IPAllowlist ------------------------------------------------------------------------------


ALLOW = IPAllowlist((ipaddress.ip_network("203.0.113.0/24"),
                     ipaddress.ip_network("2001:db8::/32")))  # fmt: skip


@pytest.mark.parametrize("address", ["203.0.113.1", "203.0.113.255", "2001:db8::1",
                                     "2001:db8:ffff::1", "::ffff:203.0.113.7",
                                     "[2001:db8::2]"])  # fmt: skip
def test_allowlist_accepts_addresses_inside(address: str) -> None:
    """Addresses inside an allowed network pass, including IPv4-mapped IPv6 forms."""
    ALLOW.check(address)


@pytest.mark.parametrize("address", ["203.0.114.1", "10.0.0.1", "2001:db9::1", "::1",
                                     "::ffff:10.0.0.1", "garbage", "", "203.0.113.1:80"])  # fmt: skip
def test_allowlist_refuses_addresses_outside(address: str) -> None:
    """Addresses outside every network, or not addresses at all, are Forbidden."""
    with pytest.raises(Forbidden):
        ALLOW.check(address)


def test_allowlist_ipv4_network_does_not_match_unmapped_ipv6() -> None:
    """An IPv6 address that is not IPv4-mapped never matches an IPv4 network."""
    allow = IPAllowlist((ipaddress.ip_network("0.0.0.0/0"),))
    allow.check("8.8.8.8")
    with pytest.raises(Forbidden):
        allow.check("2001:db8::1")


def test_empty_allowlist_allows_everything() -> None:
    """An empty allowlist allows any address, even one that does not parse."""
    allow = IPAllowlist(())
    allow.check("8.8.8.8")
    allow.check("not an address")


def test_allowlist_ipv4_mapped_network_matches_mapped_address() -> None:
    """An allowlist entry written as IPv4-mapped IPv6 admits that very mapped address."""
    IPAllowlist((ipaddress.ip_network("::ffff:203.0.113.0/120"),)).check("::ffff:203.0.113.7")


# --- Basic ------------------------------------------------------------------------------------

BASIC = BasicAuthVerifier("relay", Secret("pa:ss wörd", "env:PW"))


def test_basic_accepts_right_credentials() -> None:
    """The right user and password (with ':' and non-ASCII) pass."""
    BASIC.verify(req({"authorization": basic("relay", "pa:ss wörd")}), NOW)


def test_basic_scheme_is_case_insensitive_and_padding_spaces_ok() -> None:
    """'basic' in any case and extra spaces around the credentials are accepted."""
    token = base64.b64encode("relay:pa:ss wörd".encode()).decode()
    BASIC.verify(req({"authorization": f"bAsIc {token}"}), NOW)
    BASIC.verify(req({"authorization": f"Basic   {token}  "}), NOW)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer abc",
        basic("relay", "wrong"),
        basic("other", "pa:ss wörd"),
        basic("relay", "pa:ss wörd "),
        basic("relay", "pa:ss"),
        "Basic " + base64.b64encode(b"relaypa:ss").decode(),
        "Basic " + base64.b64encode(b"relay").decode(),
        "Basic !!!not-base64!!!",
        "Basic cmVsYXk6cGE=extra",
        "Basic ÿÿÿÿ",
    ],
)
def test_basic_refuses_with_challenge(header: str | None) -> None:
    """Missing, malformed or wrong credentials are refused with a Basic challenge."""
    headers = {} if header is None else {"authorization": header}
    with pytest.raises(AuthenticationFailed) as info:
        BASIC.verify(req(headers), NOW)
    assert info.value.headers() == {"WWW-Authenticate": 'Basic realm="relay", charset="UTF-8"'}
    assert info.value.status == 401


def test_basic_challenge_uses_configured_realm() -> None:
    """The challenge names the verifier's realm."""
    verifier = BasicAuthVerifier("u", Secret("p", "env:P"), realm="bandwidth")
    with pytest.raises(AuthenticationFailed) as info:
        verifier.verify(req(), NOW)
    assert info.value.challenge == 'Basic realm="bandwidth", charset="UTF-8"'


def test_basic_error_detail_does_not_leak_password() -> None:
    """A failed Basic check never repeats the password in its detail."""
    with pytest.raises(AuthenticationFailed) as info:
        BASIC.verify(req({"authorization": basic("relay", "guess")}), NOW)
    assert "pa:ss" not in info.value.detail
    assert "guess" not in info.value.detail


# --- URL token --------------------------------------------------------------------------------

TOKENS = TokenVerifier((Secret("old-token", "env:A"), Secret("new-token", "env:B")))


@pytest.mark.parametrize("token", ["old-token", "new-token"])
def test_token_any_configured_token_passes(token: str) -> None:
    """Every configured token (rotation) is accepted."""
    TOKENS.verify(req(token=token), NOW)


@pytest.mark.parametrize("token", [None, "", "old-token ", "OLD-TOKEN", "old", "new-tokenx",
                                   "old-tokennew-token"])  # fmt: skip
def test_token_wrong_or_missing_is_refused(token: str | None) -> None:
    """A missing, empty or wrong token is refused without a challenge."""
    with pytest.raises(AuthenticationFailed) as info:
        TOKENS.verify(req(token=token), NOW)
    assert info.value.headers() == {}


def test_token_verifier_without_tokens_refuses_everything() -> None:
    """A TokenVerifier with no tokens accepts no request, not even one without a token."""
    verifier = TokenVerifier(())
    for token in (None, "", "x"):
        with pytest.raises(AuthenticationFailed):
            verifier.verify(req(token=token), NOW)


# --- Standard Webhooks ------------------------------------------------------------------------

KEY1 = b"first-signing-key-0123456789abcd"
KEY2 = b"second-signing-key-0123456789abc"
SW = StandardWebhooksVerifier((KEY1, KEY2), tolerance=300)


def sw_sign(key: bytes, msg_id: str, stamp: str, body: bytes) -> str:
    """A Standard Webhooks ``v1,<base64>`` signature."""
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sw_headers(key: bytes = KEY1, *, msg_id: str = "msg_1", stamp: int = int(NOW),
               body: bytes = b'{"a":1}', signature: str | None = None) -> dict[str, str]:  # fmt: skip
    """Signed Standard Webhooks headers."""
    sig = sw_sign(key, msg_id, str(stamp), body) if signature is None else signature
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": sig}


@pytest.mark.parametrize("key", [KEY1, KEY2])
def test_standard_webhooks_accepts_each_active_key(key: bytes) -> None:
    """A signature by any of the active keys passes."""
    SW.verify(req(sw_headers(key), b'{"a":1}'), NOW)


def test_standard_webhooks_accepts_one_valid_among_several_signatures() -> None:
    """Several space-separated signatures pass if one of them is valid."""
    good = sw_sign(KEY2, "msg_1", str(int(NOW)), b"{}")
    bogus = "v1," + base64.b64encode(b"x" * 32).decode()
    sigs = f"v1a,zzz v1,!!notbase64!! {bogus} {good} v2,abc"
    SW.verify(req(sw_headers(signature=sigs), b"{}"), NOW)


@pytest.mark.parametrize("skew", [-300, 300, 0, 299])
def test_standard_webhooks_timestamp_inside_tolerance(skew: int) -> None:
    """A timestamp up to ``tolerance`` seconds away (either side) passes."""
    SW.verify(req(sw_headers(stamp=int(NOW) + skew, body=b"{}"), b"{}"), NOW)


@pytest.mark.parametrize("skew", [-301, 301, -100_000])
def test_standard_webhooks_timestamp_outside_tolerance(skew: int) -> None:
    """A correctly signed but stale or future timestamp is refused."""
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        SW.verify(req(sw_headers(stamp=int(NOW) + skew, body=b"{}"), b"{}"), NOW)


def test_standard_webhooks_refuses_tampered_body_id_and_unknown_key() -> None:
    """A changed body, a changed id or a signature by another key is refused."""
    headers = sw_headers(body=b'{"a":1}')
    with pytest.raises(AuthenticationFailed):
        SW.verify(req(headers, b'{"a":2}'), NOW)
    with pytest.raises(AuthenticationFailed):
        SW.verify(req({**headers, "webhook-id": "msg_2"}, b'{"a":1}'), NOW)
    with pytest.raises(AuthenticationFailed):
        SW.verify(req(sw_headers(b"another-key", body=b"{}"), b"{}"), NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_missing_header(missing: str) -> None:
    """Each of the three headers is required."""
    headers = sw_headers(body=b"{}")
    del headers[missing]
    with pytest.raises(AuthenticationFailed, match="missing"):
        SW.verify(req(headers, b"{}"), NOW)


@pytest.mark.parametrize("stamp", ["-1740823205", "1740823205.0", "\uff11\uff17\uff14\uff10", "\u0661\u0667\u0664\u0660",
                                   "1" * 13, " 1740823205", "0x67c2dc05"])  # fmt: skip
def test_standard_webhooks_malformed_timestamp(stamp: str) -> None:
    """A timestamp that is not 1-12 ASCII digits is refused as malformed."""
    headers = {**sw_headers(body=b"{}"), "webhook-timestamp": stamp}
    with pytest.raises(AuthenticationFailed, match="malformed"):
        SW.verify(req(headers, b"{}"), NOW)


def test_standard_webhooks_only_v1_signatures_count() -> None:
    """A valid MAC labelled with another version is not accepted."""
    sig = sw_sign(KEY1, "msg_1", str(int(NOW)), b"{}").replace("v1,", "v2,")
    with pytest.raises(AuthenticationFailed, match="no valid"):
        SW.verify(req(sw_headers(signature=sig), b"{}"), NOW)


def test_standard_webhooks_from_secrets_decodes_whsec() -> None:
    """from_secrets decodes 'whsec_<base64>' (prefix optional) into the signing keys."""
    b64 = base64.b64encode(KEY1).decode()
    verifier = StandardWebhooksVerifier.from_secrets(
        [Secret(f"whsec_{b64}", "env:A"), Secret(base64.b64encode(KEY2).decode(), "env:B")],
        tolerance=60,
    )
    assert verifier.keys == (KEY1, KEY2)
    assert verifier.tolerance == 60
    verifier.verify(req(sw_headers(KEY1, body=b"{}"), b"{}"), NOW)


def test_standard_webhooks_from_secrets_refuses_bad_secret_naming_ref_only() -> None:
    """A secret that is not base64 is a ValueError naming its reference, not its value."""
    with pytest.raises(ValueError, match="env:SW") as info:
        StandardWebhooksVerifier.from_secrets([Secret("whsec_not base64!", "env:SW")])
    assert "not base64!" not in str(info.value)


# --- MessageMedia -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """An RSA private key standing in for MessageMedia's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    """An RSA key MessageMedia does not use."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def mm(rsa_key: rsa.RSAPrivateKey) -> MessageMediaVerifier:
    """A MessageMedia verifier trusting ``rsa_key`` as key id 'k1'."""
    return MessageMediaVerifier({"k1": rsa_key.public_key()}, max_skew=300)


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "SHA224": hashes.SHA224(), "SHA256": hashes.SHA256(), "SHA512": hashes.SHA512(),
}  # fmt: skip
DATE = formatdate(NOW, usegmt=True)


def mm_headers(key: rsa.RSAPrivateKey, request: Request, *, digest: str = "SHA256",
               date: str = DATE, key_id: str = "k1", line: str | None = None,
               sign_digest: str | None = None) -> dict[str, str]:  # fmt: skip
    """MessageMedia signature headers over ``request_line + date + body``."""
    signed = (line or request.request_line).encode() + date.encode() + request.body
    sig = key.sign(signed, padding.PKCS1v15(), _HASHES[(sign_digest or digest).upper()])
    return {"x-messagemedia-key-id": key_id, "x-messagemedia-digest-type": digest,
            "x-messagemedia-signature": base64.b64encode(sig).decode(), "date": date}  # fmt: skip


def signed_req(key: rsa.RSAPrivateKey, body: bytes = b'{"status":"delivered"}', *,
               query: str = "", **kwargs: str) -> Request:  # fmt: skip
    """A request signed by ``key``."""
    base = req(body=body, query=query)
    return req(mm_headers(key, base, **kwargs), body, query=query)


@pytest.mark.parametrize("digest", ["SHA256", "SHA224", "SHA512", "sha512"])
def test_messagemedia_accepts_each_digest(mm: MessageMediaVerifier, rsa_key: rsa.RSAPrivateKey,
                                          digest: str) -> None:  # fmt: skip
    """A signature with any supported digest (case-insensitive) passes."""
    mm.verify(signed_req(rsa_key, digest=digest, query="x=1"), NOW)


def test_messagemedia_accepts_explicit_rsa_cipher(mm: MessageMediaVerifier,
                                                  rsa_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """An explicit X-MessageMedia-Cipher-Type: rsa is accepted."""
    r = signed_req(rsa_key)
    mm.verify(req({**r.headers, "x-messagemedia-cipher-type": "rsa"}, r.body), NOW)


def test_messagemedia_refuses_tampered_body(mm: MessageMediaVerifier,
                                            rsa_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """Changing one byte of the body invalidates the signature."""
    r = signed_req(rsa_key, body=b'{"status":"delivered"}')
    with pytest.raises(AuthenticationFailed, match="bad MessageMedia signature"):
        mm.verify(req(r.headers, b'{"status":"Delivered"}'), NOW)


def test_messagemedia_refuses_other_request_line(mm: MessageMediaVerifier,
                                                 rsa_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """A signature over another path or query does not pass."""
    r = signed_req(rsa_key, query="a=1")
    with pytest.raises(AuthenticationFailed):
        mm.verify(req(r.headers, r.body, query="a=2"), NOW)
    with pytest.raises(AuthenticationFailed):
        mm.verify(req(r.headers, r.body, query="a=1", path="/hooks/other"), NOW)


def test_messagemedia_path_override_rebuilds_request_line(rsa_key: rsa.RSAPrivateKey) -> None:
    """path_override verifies against the request line MessageMedia saw before a proxy."""
    verifier = MessageMediaVerifier({"k1": rsa_key.public_key()}, path_override="/public/mm")
    body = b"{}"
    headers = mm_headers(rsa_key, req(body=body), line="POST /public/mm HTTP/1.1")
    verifier.verify(req(headers, body, path="/hooks/mm"), NOW)
    plain = MessageMediaVerifier({"k1": rsa_key.public_key()})
    with pytest.raises(AuthenticationFailed):
        plain.verify(req(headers, body, path="/hooks/mm"), NOW)


def test_messagemedia_refuses_other_key(mm: MessageMediaVerifier,
                                        other_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """A signature by a key that is not the one named is refused."""
    with pytest.raises(AuthenticationFailed, match="bad MessageMedia signature"):
        mm.verify(signed_req(other_key), NOW)


def test_messagemedia_refuses_digest_mismatch(mm: MessageMediaVerifier,
                                              rsa_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """A SHA256 signature announced as SHA512 is refused."""
    with pytest.raises(AuthenticationFailed):
        mm.verify(signed_req(rsa_key, digest="SHA512", sign_digest="SHA256"), NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x-messagemedia-key-id": "k2"}, "unknown X-MessageMedia-Key-Id"),
        ({"x-messagemedia-digest-type": "SHA1"}, "unsupported X-MessageMedia-Digest-Type"),
        ({"x-messagemedia-digest-type": "MD5"}, "unsupported X-MessageMedia-Digest-Type"),
        ({"x-messagemedia-cipher-type": "DSA"}, "unsupported X-MessageMedia-Cipher-Type"),
        ({"date": "yesterday"}, "malformed Date"),
        ({"date": "Mon, 01 Jan 99999 00:00:00 GMT"}, "malformed Date"),
        ({"date": formatdate(NOW - 301, usegmt=True)}, "skew"),
        ({"date": formatdate(NOW + 301, usegmt=True)}, "skew"),
        ({"x-messagemedia-signature": "***"}, "malformed X-MessageMedia-Signature"),
        ({"x-messagemedia-signature": "AAAA"}, "bad MessageMedia signature"),
        ({"x-messagemedia-key-id": ""}, "missing"),
        ({"x-messagemedia-digest-type": ""}, "missing"),
        ({"x-messagemedia-signature": ""}, "missing"),
        ({"date": ""}, "missing"),
    ],
)
def test_messagemedia_refusals(mm: MessageMediaVerifier, rsa_key: rsa.RSAPrivateKey,
                               change: dict[str, str], message: str) -> None:  # fmt: skip
    """Each wrong, missing or malformed header is refused with a specific detail."""
    r = signed_req(rsa_key)
    with pytest.raises(AuthenticationFailed, match=message):
        mm.verify(req({**r.headers, **change}, r.body), NOW)


def test_messagemedia_date_inside_skew_passes(mm: MessageMediaVerifier,
                                              rsa_key: rsa.RSAPrivateKey) -> None:  # fmt: skip
    """A correctly signed Date up to max_skew away is accepted."""
    mm.verify(signed_req(rsa_key, date=formatdate(NOW - 299, usegmt=True)), NOW)
    mm.verify(signed_req(rsa_key, date=formatdate(NOW + 300, usegmt=True)), NOW)


def test_load_rsa_public_key_pem_and_bare_base64(rsa_key: rsa.RSAPrivateKey) -> None:
    """load_rsa_public_key reads PEM and MessageMedia's bare base64 SPKI to the same key."""
    public = rsa_key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    from_pem = load_rsa_public_key("\n" + pem + "\n")
    from_b64 = load_rsa_public_key(base64.b64encode(der).decode())
    assert from_pem.public_numbers() == public.public_numbers()
    assert from_b64.public_numbers() == public.public_numbers()


def test_load_rsa_public_key_refuses_non_rsa_and_garbage() -> None:
    """An EC key, garbage and broken PEM are ValueErrors."""
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for text in (ec_pem, "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                 base64.b64encode(b"garbage").decode(), ""):  # fmt: skip
        with pytest.raises(ValueError, match="RSA public key"):
            load_rsa_public_key(text)


# --- AllOf ------------------------------------------------------------------------------------


def test_all_of_passes_only_when_every_verifier_passes() -> None:
    """AllOf passes when all pass and raises the first failure otherwise."""
    both = AllOf((TOKENS, BASIC))
    ok_basic = {"authorization": basic("relay", "pa:ss wörd")}
    both.verify(req(ok_basic, token="new-token"), NOW)
    with pytest.raises(AuthenticationFailed) as info:
        both.verify(req(ok_basic, token="bad"), NOW)
    assert info.value.challenge is None  # the token verifier failed first
    with pytest.raises(AuthenticationFailed) as info:
        both.verify(req({}, token="new-token"), NOW)
    assert info.value.challenge is not None  # then the Basic verifier


def test_empty_all_of_passes() -> None:
    """An AllOf without verifiers accepts everything (sources.build refuses such sources)."""
    AllOf(()).verify(req(), NOW)


# --- properties: verifiers raise only AuthenticationFailed ------------------------------------

_header_values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
            max_size=60),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.binary(max_size=40).map(lambda b: "v1," + base64.b64encode(b).decode()),
    st.integers(-(10**14), 10**14).map(str),
    st.sampled_from(["k1", "SHA256", "sha512", "SHA1", "RSA", "rsa", "basic", "Basic ",
                     str(int(NOW)), DATE, "Mon, 01 Jan 99999 00:00:00 GMT",
                     "Thu, 01 Jan 1970 00:00:00 -0000", "31 Dec 9999 23:59:59 +2359"]),
    st.floats(-6e10, 2.5e11).map(lambda f: formatdate(f, usegmt=False)),
)
_header_names = st.sampled_from([
    "authorization", "webhook-id", "webhook-timestamp", "webhook-signature",
    "x-messagemedia-key-id", "x-messagemedia-digest-type", "x-messagemedia-signature",
    "x-messagemedia-cipher-type", "date", "content-type",
])  # fmt: skip
_requests = st.builds(
    Request,
    method=st.sampled_from(["POST", "GET", "PÖST", ""]),
    path=st.text(max_size=20),
    query=st.text(max_size=20),
    headers=st.dictionaries(_header_names, _header_values, max_size=8),
    body=st.binary(max_size=100),
    token=st.one_of(st.none(), st.text(max_size=20)),
    http_version=st.sampled_from(["1.1", "2", ""]),
)


def _only_auth_failures(verifier: object, request: Request, now: float) -> None:
    try:
        verifier.verify(request, now)  # type: ignore[attr-defined]
    except AuthenticationFailed as exc:
        assert exc.status == 401
        assert exc.detail


@settings(max_examples=300, deadline=None)
@given(request=_requests, now=st.floats(0, 4e9))
def test_basic_and_token_raise_only_authentication_failed(request: Request, now: float) -> None:
    """Random headers, bodies and tokens never make Basic/Token verifiers raise anything else."""
    _only_auth_failures(BASIC, request, now)
    _only_auth_failures(TOKENS, request, now)


@settings(max_examples=300, deadline=None)
@given(request=_requests, now=st.one_of(st.just(NOW), st.floats(-1e12, 1e12)))
def test_standard_webhooks_raises_only_authentication_failed(request: Request,
                                                             now: float) -> None:  # fmt: skip
    """Random headers and bodies never make StandardWebhooksVerifier raise anything else."""
    _only_auth_failures(SW, request, now)


@settings(max_examples=300, deadline=None)
@given(request=_requests, now=st.one_of(st.just(NOW), st.floats(-1e12, 1e12)))
def test_messagemedia_raises_only_authentication_failed(rsa_key: rsa.RSAPrivateKey,
                                                        request: Request, now: float) -> None:  # fmt: skip
    """Random headers and bodies never make MessageMediaVerifier raise anything else."""
    verifier = MessageMediaVerifier({"k1": rsa_key.public_key()})
    _only_auth_failures(verifier, request, now)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200), sig=st.binary(min_size=1, max_size=300))
def test_messagemedia_random_signature_bytes_only_fail_authentication(
    rsa_key: rsa.RSAPrivateKey, body: bytes, sig: bytes
) -> None:
    """Random signature bytes reaching the RSA check are refused as a bad signature."""
    verifier = MessageMediaVerifier({"k1": rsa_key.public_key()})
    headers = {"x-messagemedia-key-id": "k1", "x-messagemedia-digest-type": "SHA256",
               "x-messagemedia-signature": base64.b64encode(sig).decode(), "date": DATE}  # fmt: skip
    with pytest.raises(AuthenticationFailed, match="bad MessageMedia signature"):
        verifier.verify(req(headers, body), NOW)


@settings(max_examples=200, deadline=None)
@given(
    overrides=st.dictionaries(_header_names, _header_values, max_size=3),
    drop=st.sets(_header_names, max_size=2),
    body=st.binary(max_size=50),
)
def test_mutated_valid_signatures_raise_only_authentication_failed(
    rsa_key: rsa.RSAPrivateKey, overrides: dict[str, str], drop: set[str], body: bytes
) -> None:
    """Correctly signed requests with a few headers changed or dropped still fail only with 401."""
    mm_verifier = MessageMediaVerifier({"k1": rsa_key.public_key()})
    signed = {**mm_headers(rsa_key, req(body=body)), **sw_headers(body=body)}
    headers = {k: v for k, v in {**signed, **overrides}.items() if k not in drop}
    request = req(headers, body)
    for verifier, sig_header in ((mm_verifier, "x-messagemedia-signature"),
                                 (SW, "webhook-signature")):  # fmt: skip
        try:
            verifier.verify(request, NOW)
        except AuthenticationFailed:
            continue
        assert headers[sig_header] == signed[sig_header]  # passing needs the real signature
