"""Random mutations of the official signed list: never accepted with other content, never anything
but a `WhitelistError`.

Two properties. (1) Arbitrary byte edits anywhere: the outcome is a `WhitelistError`, or — for the
edits canonicalization erases (a space inside a tag, a comment) or that touch unsigned bytes the
verifier does not use — a list whose content is exactly the original one. (2) An edit of one
character of signed data (a value, the signature, a digest) is always refused.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drimbox.errors import InternalError
from drimbox.trust.errors import WhitelistError
from drimbox.trust.whitelist import Whitelist, verify_whitelist
from support.trust import NOW, SIGNED, official_root

ORIGINAL = SIGNED.read_bytes()
ANCHORS = [official_root()]
REFERENCE = verify_whitelist(ORIGINAL, ANCHORS, now=NOW)


def _signed_positions() -> list[int]:
    """Offsets of characters that are signed and meaningful: element text outside KeyInfo, except
    whitespace and the last base64 character before '=' (its low bits are padding)."""
    key_info = re.search(rb"<ds:KeyInfo>.*</ds:KeyInfo>", ORIGINAL, re.S)
    assert key_info
    positions = []
    for match in re.finditer(rb">([^<]+)<", ORIGINAL):
        if key_info.start() <= match.start() < key_info.end():
            continue
        value = match.group(1)
        for i, byte in enumerate(value):
            if chr(byte).isspace() or value[i + 1 : i + 2] == b"=":
                continue
            positions.append(match.start(1) + i)
    return positions


SIGNED_POSITIONS = _signed_positions()


def _same_content(whitelist: Whitelist) -> bool:
    return (
        whitelist.generated_at == REFERENCE.generated_at
        and whitelist.domains == REFERENCE.domains
        and whitelist.signer == REFERENCE.signer
    )


ANYWHERE = st.integers(0, len(ORIGINAL) - 1)
mutation = st.one_of(
    st.tuples(st.just("replace"), ANYWHERE, st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("insert"), st.integers(0, len(ORIGINAL)), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), ANYWHERE, st.integers(1, 64)),
    st.tuples(st.just("flip"), ANYWHERE, st.integers(0, 7)),
)


def _apply(kind: str, at: int, what: bytes | int) -> bytes:
    if kind == "replace":
        assert isinstance(what, bytes)
        return ORIGINAL[:at] + what + ORIGINAL[at + len(what) :]
    if kind == "insert":
        assert isinstance(what, bytes)
        return ORIGINAL[:at] + what + ORIGINAL[at:]
    if kind == "delete":
        assert isinstance(what, int)
        return ORIGINAL[:at] + ORIGINAL[at + what :]
    assert isinstance(what, int)
    return ORIGINAL[:at] + bytes([ORIGINAL[at] ^ (1 << what)]) + ORIGINAL[at + 1 :]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation)
def test_random_mutations_never_yield_another_list(edit: tuple[str, int, bytes | int]) -> None:
    mutated = _apply(*edit)
    if mutated == ORIGINAL:
        return
    try:
        whitelist = verify_whitelist(mutated, ANCHORS, now=NOW)
    except WhitelistError as error:
        assert not isinstance(error, InternalError), f"mutation {edit!r}: {error.detail}"
        return
    assert _same_content(whitelist), f"mutation {edit!r} accepted with other content"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIGNED_POSITIONS), st.sampled_from(b"AZaz09+/.-:"))
def test_any_change_of_a_signed_character_is_refused(position: int, replacement: int) -> None:
    if ORIGINAL[position] == replacement:
        replacement = ord("Q") if replacement != ord("Q") else ord("q")
    mutated = ORIGINAL[:position] + bytes([replacement]) + ORIGINAL[position + 1 :]
    try:
        verify_whitelist(mutated, ANCHORS, now=NOW)
    except WhitelistError as error:
        assert not isinstance(error, InternalError), f"change at {position}: {error.detail}"
        return
    raise AssertionError(f"change at {position} to {chr(replacement)!r} was accepted")


def test_the_mutation_test_reports_an_injected_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(*_args: object) -> None:
        raise IndexError("injected bug")

    monkeypatch.setattr("drimbox.trust.whitelist._content", buggy)
    with pytest.raises(AssertionError, match="injected bug"):
        test_random_mutations_never_yield_another_list()
