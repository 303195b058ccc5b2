"""Phone numbers and other addresses, normalised with Google's libphonenumber.

Providers write numbers three ways: E.164 (``+15554443333``), international digits
without ``+`` (Skycore: ``17745550001``) and national formats. Short codes (``28444``) and
alphanumeric sender ids (``PINGPLUS``) are not phone numbers: they are kept exactly as
given and flagged by their :data:`~relay.schema.AddressKind`, never mangled.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from relay.schema import AddressKind

_SHORT_CODE_MAX = 8  # the longest short codes in use have 8 digits (none are valid E.164)


def _e164(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_address(text: str | None, region: str | None = None
                      ) -> tuple[str | None, AddressKind | None]:
    """``(address, kind)``: E.164 where ``text`` is a phone number, else ``text`` as it is.

    Cached: a source sees the same few numbers again and again, and parsing is the
    costliest step of normalisation (it matters to replay speed).
    """
    if text is None:
        return None, None
    return _normalise(str(text), region)


@lru_cache(maxsize=65536)
def _normalise(text: str, region: str | None) -> tuple[str | None, AddressKind | None]:
    value = text.strip()
    if not value:
        return None, None
    compact = value.replace(" ", "").replace("-", "").replace("(", "").replace(")", "")
    if compact.startswith("+"):
        e164 = _e164(compact, None)
        return (e164, "e164") if e164 else (value, "other")
    if compact.startswith("00") and compact[2:].isdigit():
        e164 = _e164("+" + compact[2:], None)
        return (e164, "e164") if e164 else (value, "other")
    if compact.isdigit():
        if len(compact) <= _SHORT_CODE_MAX and not (region and _e164(compact, region)):
            return value, "short_code"
        if region:
            e164 = _e164(compact, region)
            if e164 and phonenumbers.is_valid_number(phonenumbers.parse(e164)):
                return e164, "e164"
        e164 = _e164("+" + compact, None)
        return (e164, "e164") if e164 else (value, "other")
    if any(c.isalpha() for c in value) and len(value) <= 11 and value.replace(" ", "").isalnum():
        return value, "alphanumeric"
    return value, "other"
