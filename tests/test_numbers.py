"""Unit tests for relay.numbers: E.164 normalisation, short codes and sender ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.numbers import normalise_address


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+15554443333", None, "+15554443333"),
        ("+1 (202) 555-0143", None, "+12025550143"),
        ("+44 20 7946 0018", "US", "+442079460018"),
        ("+4915123456789", None, "+4915123456789"),
        ("  +12025550143  ", None, "+12025550143"),
    ],
)
def test_e164_input_is_normalised(text: str, region: str | None, expected: str) -> None:
    """Numbers written with '+' become compact E.164 whatever the region."""
    assert normalise_address(text, region) == (expected, "e164")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("17745550001", "+17745550001"),
        ("4915123456789", "+4915123456789"),
        ("442079460018", "+442079460018"),
    ],
)
def test_international_digits_without_plus(text: str, expected: str) -> None:
    """International digits without '+' (Skycore style) become E.164 without a region."""
    assert normalise_address(text) == (expected, "e164")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0044 20 7946 0018", "+442079460018"),
        ("0049 151 23456789", "+4915123456789"),
    ],
)
def test_00_international_prefix(text: str, expected: str) -> None:
    """The '00' international prefix is read like '+'."""
    assert normalise_address(text) == (expected, "e164")


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("(202) 555-0143", "US", "+12025550143"),
        ("202-555-0143", "US", "+12025550143"),
        ("2025550143", "US", "+12025550143"),
        ("17745550001", "US", "+17745550001"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("015123456789", "DE", "+4915123456789"),
    ],
)
def test_national_numbers_use_default_region(text: str, region: str, expected: str) -> None:
    """National numbers are read in the source's default region."""
    assert normalise_address(text, region) == (expected, "e164")


def test_international_digits_win_when_region_reading_is_impossible() -> None:
    """With a region set, digits that cannot be a national number are read as international."""
    assert normalise_address("4915123456789", "US") == ("+4915123456789", "e164")


@pytest.mark.parametrize(
    ("text", "region"),
    [("28444", None), ("28444", "US"), ("611", "US"), ("12", None), ("12345678", None),
     ("00", None), ("898211", "US")],
)  # fmt: skip
def test_short_codes_are_kept_and_flagged(text: str, region: str | None) -> None:
    """Digit strings of up to 8 digits that are not numbers are kept as short codes."""
    assert normalise_address(text, region) == (text, "short_code")


def test_short_code_keeps_its_original_spelling() -> None:
    """A short code written with a space keeps the spacing it was given (trimmed)."""
    assert normalise_address(" 284 44 ") == ("284 44", "short_code")


@pytest.mark.parametrize("text", ["PINGPLUS", "Bandwidth", "MyShop 24", "ÄÖÜ", "A1", "abcdefghijk"])
def test_alphanumeric_sender_ids_are_kept_and_flagged(text: str) -> None:
    """Letters (up to 11 characters, spaces allowed) are alphanumeric sender ids, unchanged."""
    assert normalise_address(text) == (text, "alphanumeric")


@pytest.mark.parametrize(
    "text",
    ["VERYLONGSENDERID", "hello world foo", "abc+", "user@example.com", "+", "+1", "123456789",
     "+999 123"],
)  # fmt: skip
def test_other_addresses_are_kept_as_other(text: str) -> None:
    """Anything neither a number, a short code nor a sender id is kept and flagged 'other'."""
    assert normalise_address(text) == (text, "other")


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n"])
def test_empty_addresses_are_none(text: str | None) -> None:
    """None, empty and blank addresses normalise to (None, None)."""
    assert normalise_address(text) == (None, None)


def test_non_string_input_is_stringified() -> None:
    """A number given as an int (JSON number) is read as its digits."""
    assert normalise_address(17745550001) == ("+17745550001", "e164")  # type: ignore[arg-type]


def test_normalising_is_idempotent_for_e164() -> None:
    """Normalising an already normalised E.164 number returns it unchanged."""
    first, kind = normalise_address("(202) 555-0143", "US")
    assert kind == "e164"
    assert normalise_address(first, "GB") == (first, "e164")


def test_national_number_is_not_reread_as_another_country() -> None:
    """A 10-digit US national number stays in +1 rather than becoming a Brazilian number."""
    assert normalise_address("(555) 444-3333", "US") == ("+15554443333", "e164")


@pytest.mark.parametrize(("text", "region"), [("62884", "GB"), ("88123", "DE")])
def test_short_code_with_region_is_still_a_short_code(text: str, region: str) -> None:
    """A short code stays a short code when the source has a default region."""
    assert normalise_address(text, region) == (text, "short_code")


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=30),
        st.text(alphabet="0123456789+-() .", max_size=25),
        st.from_regex(r"\A(\+|00)?[0-9]{1,20}\Z"),
        st.text(alphabet="\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u00b2\u00b30123456789+", max_size=20),
    ),
    region=st.one_of(st.none(), st.sampled_from(["US", "GB", "DE", "IN", "BR", "ZZ", "XX", "us"])),
)
def test_normalise_address_never_raises(text: str, region: str | None) -> None:
    """Arbitrary text never makes normalise_address raise, and the kind matches the address."""
    address, kind = normalise_address(text, region)
    if address is None:
        assert kind is None
        assert not text.strip()
        return
    assert kind in {"e164", "short_code", "alphanumeric", "other"}
    if kind == "e164":
        assert address.startswith("+")
        assert address[1:].isdigit()
    else:
        assert address == text.strip()
