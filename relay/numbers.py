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


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_possible_number(number) else None


def _format(number: phonenumbers.PhoneNumber) -> str:
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _valid(number: phonenumbers.PhoneNumber | None) -> bool:
    return number is not None and bool(phonenumbers.is_valid_number(number))


def _digits(digits: str, region: str | None) -> tuple[str | None, AddressKind | None]:
    """Digits without '+': national (in ``region``) or international without the '+'."""
    national = _parse(digits, region) if region else None
    international = _parse("+" + digits, None)
    if len(digits) <= _SHORT_CODE_MAX and not _valid(national):
        return digits, "short_code"
    code = str(phonenumbers.country_code_for_region(region)) if region else ""
    carries_code = bool(code) and digits.startswith(code)
    ranked = [international, national] if carries_code else [national, international]
    for number in ranked:  # a valid reading first, then a merely possible one
        if _valid(number):
            return _format(number), "e164"  # type: ignore[arg-type]
    for number in ranked:
        if number is not None:
            return _format(number), "e164"
    return digits, "other"


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
    compact = compact.replace(".", "")
    if compact.startswith("00") and compact[2:].isdigit():
        compact = "+" + compact[2:]
    if compact.startswith("+") and compact[1:].isdigit():
        number = _parse(compact, None)
        return (_format(number), "e164") if number else (value, "other")
    if compact.isdigit():
        address, kind = _digits(compact, region)
        return (value, kind) if kind != "e164" else (address, kind)
    if any(c.isalpha() for c in value) and len(value) <= 11 and value.replace(" ", "").isalnum():
        return value, "alphanumeric"
    return value, "other"
