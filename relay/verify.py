"""Proving a postback came from its provider: source addresses and authentication schemes.

A :class:`Verifier` looks at a framework-free :class:`Request` (method, path, headers,
body bytes, the URL token) and the current time, and either returns or raises
:class:`~relay.errors.AuthenticationFailed`. Verifiers never raise anything else, whatever
the headers hold: a garbage signature is a 401, never a 500. Every comparison of secret
material is constant-time (:func:`hmac.compare_digest`); the clock is a parameter so tests
can move it.

Schemes: HTTP Basic (Bandwidth), a secret URL token (Skycore, Pingueen), Standard Webhooks
HMAC-SHA256 (Ping+ Media), MessageMedia RSA PKCS#1 v1.5 signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.errors import AuthenticationFailed, Forbidden
from relay.settings import IPNetwork, Secret

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Request(NamedTuple):
    """A postback request as the web layer hands it over, and what a verifier may look at.

    ``path`` is the request target's path as sent (not percent-decoded: signatures cover
    it); headers are keyed in lower case; ``peer`` is the direct peer's address. A named
    tuple: immutable, and cheap to build once per request.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    token: str | None = None
    http_version: str = "1.1"
    peer: str | None = None

    @property
    def request_line(self) -> str:
        """``POST /path?query HTTP/1.1``, as the client sent it."""
        target = f"{self.path}?{self.query}" if self.query else self.path
        return f"{self.method} {target} HTTP/{self.http_version}"


class Verifier(Protocol):
    """Raises :class:`AuthenticationFailed` unless ``request`` is authentic at ``now``."""

    def verify(self, request: Request, now: float) -> None: ...


# --- addresses ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPAddress | None:
    """An IP address from text (IPv6 brackets and zone ids tolerated), or None.

    Cached: the same few provider and proxy addresses arrive again and again.
    """
    if not text:
        return None
    text = text.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # ::ffff:a.b.c.d matches a.b.c.d/nn too
    return any(a.version == net.version and a in net for a in candidates for net in networks)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted_proxies: Sequence[IPNetwork]) -> str:
    """The caller's address: ``X-Forwarded-For`` is honoured only from trusted proxies.

    Walks the header from the right, skipping trusted proxies, so a client cannot put an
    address of its choosing at the left of the chain.
    """
    address = parse_ip(peer)
    if address is None:
        return peer or ""
    if not forwarded_for or not _in(address, trusted_proxies):
        return str(address)
    peer_address = address
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = parse_ip(hop)
        if hop_ip is None:
            return str(peer_address)  # a malformed chain: trust only what we saw ourselves
        address = hop_ip
        if not _in(hop_ip, trusted_proxies):
            break
    return str(address)


class ClientAddresses:
    """:func:`client_address` for one set of trusted proxies, memoised by peer and header:
    a provider posts from a few addresses, through the same proxies."""

    def __init__(self, trusted_proxies: Sequence[IPNetwork], size: int = 4096) -> None:
        self.trusted_proxies = tuple(trusted_proxies)
        self.resolve = lru_cache(maxsize=size)(self._resolve)

    def _resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def __repr__(self) -> str:
        return f"ClientAddresses(trusted_proxies={self.trusted_proxies!r})"


@dataclass(frozen=True, slots=True)
class IPAllowlist:
    """Only addresses inside ``networks`` may post (an empty list allows all)."""

    networks: tuple[IPNetwork, ...]

    def check(self, address: str) -> None:
        """Raise :class:`Forbidden` unless ``address`` is allowed."""
        if not self.networks:
            return
        ip = parse_ip(address)
        if ip is None or not _in(ip, self.networks):
            raise Forbidden("source address not allowed")


# --- HTTP Basic -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BasicAuthVerifier:
    """HTTP Basic (RFC 7617); a failure carries the ``WWW-Authenticate`` challenge."""

    username: str
    password: Secret
    realm: str = "relay"

    def verify(self, request: Request, now: float) -> None:
        challenge = f'Basic realm="{self.realm}", charset="UTF-8"'
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise AuthenticationFailed("basic credentials required", challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise AuthenticationFailed("malformed basic credentials", challenge) from None
        user, sep, password = decoded.partition(b":")
        ok_user = hmac.compare_digest(user, self.username.encode())
        ok_pass = hmac.compare_digest(password, self.password.reveal().encode())
        if not (sep and ok_user and ok_pass):
            raise AuthenticationFailed("bad basic credentials", challenge)


# --- URL token ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """A secret token in the URL path (``/hooks/{source}/{token}``); several for rotation."""

    tokens: tuple[Secret, ...]

    def verify(self, request: Request, now: float) -> None:
        given = (request.token or "").encode()
        matched = False
        for token in self.tokens:  # no early exit: time does not depend on which matched
            matched |= hmac.compare_digest(given, token.reveal().encode())
        if not given or not matched:
            raise AuthenticationFailed("bad or missing URL token")


# --- Standard Webhooks (HMAC-SHA256) -------------------------------------------------------


def _whsec_key(secret: Secret) -> bytes:
    value = secret.reveal()
    value = value.removeprefix("whsec_")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{secret.ref} is not a 'whsec_<base64>' secret") from None


@dataclass(frozen=True, slots=True)
class StandardWebhooksVerifier:
    """Standard Webhooks: ``v1,`` base64 HMAC-SHA256 of ``id.timestamp.body``.

    Several secrets may be active at once (rotation); ``webhook-signature`` may hold
    several space-separated signatures. The timestamp must be within ``tolerance`` seconds.
    """

    keys: tuple[bytes, ...]
    tolerance: float = 300.0

    @classmethod
    def from_secrets(cls, secrets: Sequence[Secret], tolerance: float = 300.0
                     ) -> StandardWebhooksVerifier:
        """Build from ``whsec_...`` secrets (raises ValueError naming a bad reference)."""
        return cls(tuple(_whsec_key(s) for s in secrets), tolerance)

    def verify(self, request: Request, now: float) -> None:
        msg_id = request.headers.get("webhook-id")
        stamp = request.headers.get("webhook-timestamp")
        signatures = request.headers.get("webhook-signature")
        if not msg_id or not stamp or not signatures:
            raise AuthenticationFailed("missing webhook-id, webhook-timestamp or webhook-signature")
        if not msg_id.isascii():  # ids are ASCII; anything else would not even encode reliably
            raise AuthenticationFailed("malformed webhook-id")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise AuthenticationFailed("malformed webhook-timestamp")
        if abs(now - int(stamp)) > self.tolerance:
            raise AuthenticationFailed("webhook-timestamp outside the tolerance")
        signed = msg_id.encode() + b"." + stamp.encode() + b"." + request.body
        given = []
        for entry in signatures.split():
            version, _, sig = entry.partition(",")
            if version == "v1":
                try:
                    given.append(base64.b64decode(sig, validate=True))
                except (binascii.Error, ValueError):
                    continue
        matched = False
        for key in self.keys:
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            for sig_bytes in given:
                matched |= hmac.compare_digest(expected, sig_bytes)
        if not matched:
            raise AuthenticationFailed("no valid webhook-signature")


# --- MessageMedia (RSA PKCS#1 v1.5) ---------------------------------------------------------

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA224": hashes.SHA224,
    "SHA256": hashes.SHA256,
    "SHA512": hashes.SHA512,
}


def load_rsa_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM, or from the bare base64 SPKI that MessageMedia returns."""
    data = text.strip().encode()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("not an RSA public key (PEM or base64 SPKI)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


@dataclass(frozen=True, slots=True)
class MessageMediaVerifier:
    """MessageMedia signed webhooks.

    ``X-MessageMedia-Signature`` is base64 RSA PKCS#1 v1.5 over request line + ``Date`` +
    raw body (no separators), with the digest in ``X-MessageMedia-Digest-Type``, by the key
    named in ``X-MessageMedia-Key-Id``. ``Date`` must be within ``max_skew`` seconds.
    ``path_override`` rebuilds the request line as MessageMedia saw it behind a proxy.
    """

    keys: Mapping[str, rsa.RSAPublicKey]
    max_skew: float = 300.0
    path_override: str | None = None

    def verify(self, request: Request, now: float) -> None:
        h = request.headers
        key_id = h.get("x-messagemedia-key-id", "")
        digest = h.get("x-messagemedia-digest-type", "").upper()
        signature = h.get("x-messagemedia-signature", "")
        date = h.get("date", "")
        if not key_id or not signature or not date or not digest:
            raise AuthenticationFailed("missing MessageMedia signature headers")
        key = self.keys.get(key_id)
        if key is None:
            raise AuthenticationFailed("unknown X-MessageMedia-Key-Id")
        algorithm = _DIGESTS.get(digest)
        if algorithm is None:
            raise AuthenticationFailed("unsupported X-MessageMedia-Digest-Type")
        cipher = h.get("x-messagemedia-cipher-type", "RSA").upper()
        if cipher != "RSA":
            raise AuthenticationFailed("unsupported X-MessageMedia-Cipher-Type")
        try:
            parsed = parsedate_to_datetime(date)
            if parsed.tzinfo is None:  # "-0000" or no zone: UTC, not the host's local time
                parsed = parsed.replace(tzinfo=UTC)
            sent = parsed.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            raise AuthenticationFailed("malformed Date header") from None
        if abs(now - sent) > self.max_skew:
            raise AuthenticationFailed("Date header outside the allowed skew")
        try:
            raw_sig = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise AuthenticationFailed("malformed X-MessageMedia-Signature") from None
        line = request.request_line
        if self.path_override:
            line = f"{request.method} {self.path_override} HTTP/{request.http_version}"
        signed = line.encode() + date.encode() + request.body
        try:
            key.verify(raw_sig, signed, padding.PKCS1v15(), algorithm())
        except (InvalidSignature, ValueError):
            raise AuthenticationFailed("bad MessageMedia signature") from None


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every verifier must pass (e.g. a URL token and a signature)."""

    verifiers: tuple[Verifier, ...]

    def verify(self, request: Request, now: float) -> None:
        for verifier in self.verifiers:
            verifier.verify(request, now)
