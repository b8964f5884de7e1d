"""The Accept header parser and DICOMweb syntax negotiation, on the official DRIM-M header and
on generated input (hypothesis): it returns ranges or raises AcceptError, never anything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drimbox.dicom.transcode import (
    PRODUCIBLE_SYNTAXES,
    choose_syntax,
    ranked_syntaxes,
    uniform_syntax,
)
from drimbox.http.accept import (
    AcceptError,
    MediaRange,
    SyntaxAcceptance,
    accepts_media_type,
    parse_accept,
    syntax_acceptance,
)
from drimbox.samples import ANS_DIR

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
J2K = "1.2.840.10008.1.2.4.90"
EVLE = "1.2.840.10008.1.2.1"


def official_accept() -> str:
    text = (ANS_DIR / "validators" / "wado-rs-series-request.txt").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("Accept:"))
    return line.partition(":")[2].strip()


def test_official_drim_m_accept_header() -> None:
    header = official_accept()
    assert header.endswith(",")  # the trailing comma of the sample
    ranges = parse_accept(header)
    assert len(ranges) == 10
    assert all(r.media_type == "multipart/related" for r in ranges)
    assert ranges[0].params == {
        "type": "application/dicom",
        "transfer-syntax": JPEG_LOSSLESS,
        "boundary": "**",
    }
    assert ranges[0].q == 0.9
    acceptance = syntax_acceptance(ranges)
    assert acceptance.quality(JPEG_LS) == 0.8
    assert acceptance.quality(EVLE) == 0.4
    assert acceptance.quality("1.2.840.10008.1.2") == 0  # Implicit VR LE: not listed
    # JPEG Lossless SV1 (q=0.9) for uncompressed images (re-encoding them saves bytes); a
    # JPEG-LS image goes as stored (0.8), since re-encoding it (0.9 × qs 0.5) costs a decode and
    # an encode for more bytes. Should an encoding fail: the next ones, and last EVLE.
    assert choose_syntax(JPEG_LS, acceptance) == JPEG_LS
    assert ranked_syntaxes(JPEG_LS, acceptance) == [JPEG_LS, JPEG_LOSSLESS, EVLE, J2K_LOSSY]
    assert choose_syntax(JPEG_LOSSLESS, acceptance) == JPEG_LOSSLESS
    assert choose_syntax(EVLE, acceptance) == JPEG_LOSSLESS
    assert choose_syntax("1.2.840.10008.1.2", acceptance) == JPEG_LOSSLESS
    assert ranked_syntaxes(EVLE, acceptance) == [JPEG_LOSSLESS, JPEG_LS, J2K_LOSSY, EVLE]
    # JPEG 2000 lossless is not listed: re-encoded, into the client's first choice.
    assert choose_syntax(J2K, acceptance) == JPEG_LOSSLESS
    # Said on the response's Content-Type: the first part's syntax, then pinned for the others.
    assert uniform_syntax(JPEG_LS, acceptance) == JPEG_LS
    assert uniform_syntax(EVLE, acceptance) == JPEG_LOSSLESS
    assert ranked_syntaxes(EVLE, acceptance, pinned=JPEG_LS)[0] == JPEG_LS
    assert ranked_syntaxes(JPEG_LS, acceptance, pinned=JPEG_LOSSLESS)[0] == JPEG_LOSSLESS
    # A pinned syntax the client does not accept changes nothing.
    assert ranked_syntaxes(JPEG_LS, acceptance, pinned=J2K) == ranked_syntaxes(JPEG_LS, acceptance)


def test_a_strong_preference_still_gets_a_compressed_image_re_encoded() -> None:
    # q × qs: JPEG Lossless at 1 against JPEG-LS at 0.4 → 0.5 > 0.4.
    strong = _accept((JPEG_LOSSLESS, 1), (JPEG_LS, 0.4))
    assert choose_syntax(JPEG_LS, strong) == JPEG_LOSSLESS
    # Decompression is not penalised: a client that prefers uncompressed gets it.
    plain = _accept((EVLE, 1), (JPEG_LS, 0.8))
    assert choose_syntax(JPEG_LS, plain) == EVLE


def _accept(*syntaxes: tuple[str, float]) -> SyntaxAcceptance:
    return syntax_acceptance(parse_accept(",".join(
        f'multipart/related; type="application/dicom"; transfer-syntax={ts}; q={q}'
        for ts, q in syntaxes
    )))  # fmt: skip


def test_q_values_choose_the_syntax_lossless_unless_lossy_is_named() -> None:
    # JPEG Lossless alone: produced (no 406), from any stored syntax.
    alone = _accept((JPEG_LOSSLESS, 1))
    assert ranked_syntaxes(EVLE, alone) == [JPEG_LOSSLESS]
    assert ranked_syntaxes(JPEG_LS, alone) == [JPEG_LOSSLESS]
    # Ties go to the stored syntax (no work), then to the client's order.
    tie = _accept((JPEG_LS, 0.8), (JPEG_LOSSLESS, 0.8))
    assert choose_syntax(JPEG_LOSSLESS, tie) == JPEG_LOSSLESS
    assert choose_syntax(JPEG_LS, tie) == JPEG_LS
    assert choose_syntax(EVLE, tie) == JPEG_LS
    assert uniform_syntax(JPEG_LOSSLESS, tie) == JPEG_LOSSLESS
    # A wildcard never means lossy; naming the lossy syntax does.
    anything = syntax_acceptance(
        parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    )
    assert J2K_LOSSY not in ranked_syntaxes(EVLE, anything)
    assert choose_syntax(EVLE, anything) == EVLE  # the stored one, untouched
    assert uniform_syntax(EVLE, anything) is None  # each instance as stored
    lossy = _accept((J2K_LOSSY, 1), (JPEG_LS, 0.5))
    assert ranked_syntaxes(EVLE, lossy) == [J2K_LOSSY, JPEG_LS]
    # Baseline JPEG (8-bit) and MPEG are not produced: 406 unless the stored one is accepted.
    assert ranked_syntaxes(EVLE, _accept(("1.2.840.10008.1.2.4.50", 1))) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [MediaRange("*", "*")]),
        ("", [MediaRange("*", "*")]),
        (" , ,", [MediaRange("*", "*")]),
        ("application/dicom+json", [MediaRange("application", "dicom+json")]),
        ("Application/DICOM+JSON;q=0", [MediaRange("application", "dicom+json", q=0.0)]),
        ('text/html;level="1\\"x"', [MediaRange("text", "html", {"level": '1"x'})]),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            [
                MediaRange(
                    "multipart",
                    "related",
                    {"type": "application/octet-stream", "transfer-syntax": "*"},
                )
            ],
        ),
    ],
)
def test_parse_valid(header: str | None, expected: list[MediaRange]) -> None:
    parsed = parse_accept(header)
    assert [(r.type, r.subtype, dict(r.params), r.q) for r in parsed] == [
        (r.type, r.subtype, dict(r.params), r.q) for r in expected
    ]


@pytest.mark.parametrize(
    "header",
    [
        "multipart",
        "multipart/",
        "/related",
        "*/dicom",
        'multipart/related; type="application/dicom',
        "multipart/related; q=2",
        "multipart/related; q=0.12345",
        "multipart/related; q=abc",
        "multipart/related; type",
        "multipart/related type=x",
        "a/b c/d",
        "a/b; x=\u00e9",
    ],
)
def test_parse_malformed(header: str) -> None:
    with pytest.raises(AcceptError):
        parse_accept(header)


def test_negotiation_rules() -> None:
    default = syntax_acceptance(parse_accept('multipart/related; type="application/dicom"'))
    assert default.accepts(EVLE) and not default.accepts(JPEG_LS)
    anything = syntax_acceptance(parse_accept("*/*"))
    assert anything.accepts(EVLE) and not anything.accepts(JPEG_LS)
    stored = syntax_acceptance(
        parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    )
    assert stored.accepts(JPEG_LS) and stored.accepts("1.2.3")
    other_type = syntax_acceptance(parse_accept('multipart/related; type="image/jpeg"'))
    assert not other_type.acceptable
    refused = syntax_acceptance(
        parse_accept(
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}; q=0,'
            'multipart/related; type="application/dicom"; transfer-syntax=*'
        )
    )
    assert not refused.accepts(JPEG_LS) and refused.accepts(J2K)
    assert refused.best(PRODUCIBLE_SYNTAXES) == JPEG_LOSSLESS  # the next most compact
    ranges = parse_accept("image/png;q=0.5, image/*;q=0.2")
    assert accepts_media_type(ranges, "image/png") == 0.5
    assert accepts_media_type(ranges, "image/jpeg") == 0.2
    assert accepts_media_type(ranges, "application/dicom+json") == 0


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-+.*", min_size=1, max_size=12)
_PARAM = st.tuples(
    _TOKEN,
    st.one_of(
        _TOKEN,
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10).map(
            lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
        ),
    ),
)


@st.composite
def accept_headers(draw: st.DrawFn) -> str:
    ranges = []
    for _ in range(draw(st.integers(0, 6))):
        text = f"{draw(_TOKEN)}/{draw(_TOKEN)}"
        for name, value in draw(st.lists(_PARAM, max_size=4)):
            if name == "q":
                continue
            text += draw(st.sampled_from([";", "; ", " ;"])) + f"{name}={value}"
        if draw(st.booleans()):
            text += f";q={draw(st.sampled_from(['0', '0.5', '1', '0.123', '1.000']))}"
        ranges.append(text)
    return draw(st.sampled_from([",", ", ", " ,"])).join(ranges) + draw(
        st.sampled_from(["", ",", " , "])
    )


@given(accept_headers())
def test_generated_valid_headers_parse(header: str) -> None:
    try:
        ranges = parse_accept(header)
    except AcceptError:
        # "*/x" is the only construct the generator can make that the grammar refuses.
        assert "*/" in header
        return
    assert ranges
    assert all(0.0 <= r.q <= 1.0 for r in ranges)


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(header: str) -> None:
    try:
        ranges = parse_accept(header)
    except AcceptError:
        return
    acceptance = syntax_acceptance(ranges)
    acceptance.best(PRODUCIBLE_SYNTAXES)


@given(st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_latin1_never_crashes(header: str) -> None:
    with contextlib.suppress(AcceptError):
        parse_accept(header)
