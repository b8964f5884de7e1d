"""HTTP `Accept` header parsing and DICOMweb media-type negotiation (PS3.18 §8.7).

Owns the RFC 9110 §12.5.1 grammar (media ranges, parameters as tokens or quoted strings,
q-values, empty list elements such as the DRIM-M clients' trailing comma) and the rules that
turn a list of `multipart/related; type="…"; transfer-syntax=…` ranges into the transfer
syntaxes a client accepts. Pure functions over strings: no I/O, no DICOM decoding, so that it can
be fuzzed. It must not decide what the box can produce (see `drimbox.dicom.transcode`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

# RFC 9110 §5.6.2 tchar: the characters a token may hold.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Unquoted parameter values may also hold "/": DICOMweb clients (OHIF with
# omitQuotationForMultipartRequest, dcm4che) send `type=application/dicom` unquoted.
_VALUE_CHAR = _TCHAR | {"/"}
_OWS = " \t"
MAX_ACCEPT_LENGTH = 16 * 1024  # far above the ~1.2 kB DRIM-M list; bounds the parsing work
MAX_RANGES = 256

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ANY_SYNTAX = "*"


class AcceptError(ValueError):
    """The Accept header does not follow the HTTP grammar (→ 400 Bad Request)."""


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept list. `params` keys are lower-case, values unquoted; `q` is
    taken out of the parameters wherever it appears (DICOM clients put `boundary` after it)."""

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    q: float = 1.0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    def matches(self, media_type: str) -> bool:
        """Whether this range covers `media_type` (`*/*`, `type/*` or exact, case-insensitive)."""
        kind, _, sub = media_type.lower().partition("/")
        if self.type == "*":
            return True
        return self.type == kind and self.subtype in ("*", sub)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def eof(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ows(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _OWS:
            self.pos += 1

    def token(self, what: str, chars: frozenset[str] = _TCHAR) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        if start == self.pos:
            found = self.peek() or "la fin de l'en-tête"
            raise AcceptError(f"{what} attendu à la position {start}, trouvé « {found} »")
        return self.text[start : self.pos]

    def quoted_string(self) -> str:
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.pos >= len(self.text):
                    break
                out.append(self.text[self.pos])
                self.pos += 1
            elif char in "\r\n":
                raise AcceptError("retour à la ligne dans une chaîne entre guillemets")
            else:
                out.append(char)
        raise AcceptError("chaîne entre guillemets non terminée")


def _qvalue(text: str) -> float:
    # RFC 9110 §12.4.2: 0, 0.xyz, 1 or 1.000 — at most three decimals.
    integer, dot, decimals = text.partition(".")
    valid = (
        integer in ("0", "1")
        and len(decimals) <= 3
        and decimals.isdigit() == bool(decimals)
        and decimals.isascii()
        and (not dot or decimals)
        and (integer == "0" or set(decimals) <= {"0"})
    )
    if not valid:
        raise AcceptError(f"valeur q invalide « {text} » (attendu un nombre entre 0 et 1)")
    return float(text)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into its media ranges, in header order.

    An absent or blank header means `*/*` (RFC 9110: the client accepts anything). Raises
    `AcceptError` for anything outside the grammar; never another exception.
    """
    if header is None or not header.strip(" \t,"):
        return [MediaRange("*", "*")]
    if len(header) > MAX_ACCEPT_LENGTH:
        raise AcceptError(f"en-tête Accept trop long ({len(header)} caractères)")
    scanner = _Scanner(header)
    ranges: list[MediaRange] = []
    while True:
        scanner.skip_ows()
        if scanner.eof():
            break
        if scanner.peek() == ",":  # empty list element (a trailing or doubled comma)
            scanner.pos += 1
            continue
        ranges.append(_media_range(scanner))
        if len(ranges) > MAX_RANGES:
            raise AcceptError(f"plus de {MAX_RANGES} types dans l'en-tête Accept")
        scanner.skip_ows()
        if scanner.eof():
            break
        if scanner.peek() != ",":
            raise AcceptError(
                f"« , » ou « ; » attendu à la position {scanner.pos}, trouvé « {scanner.peek()} »"
            )
        scanner.pos += 1
    if not ranges:
        return [MediaRange("*", "*")]
    return ranges


def _media_range(scanner: _Scanner) -> MediaRange:
    kind = scanner.token("type de média").lower()
    if scanner.peek() != "/":
        raise AcceptError(f"« / » attendu après « {kind} » (type/sous-type)")
    scanner.pos += 1
    subtype = scanner.token("sous-type de média").lower()
    if kind == "*" and subtype != "*":
        raise AcceptError(f"« */{subtype} » n'est pas un type de média valide")
    params: dict[str, str] = {}
    q = 1.0
    while True:
        scanner.skip_ows()
        if scanner.peek() != ";":
            break
        scanner.pos += 1
        scanner.skip_ows()
        if scanner.eof() or scanner.peek() == ",":  # "type/sub;" : tolerated, as browsers do
            break
        name = scanner.token("nom de paramètre").lower()
        scanner.skip_ows()
        if scanner.peek() != "=":
            raise AcceptError(f"« = » attendu après le paramètre « {name} »")
        scanner.pos += 1
        scanner.skip_ows()
        value = (
            scanner.quoted_string()
            if scanner.peek() == '"'
            else scanner.token("valeur", _VALUE_CHAR)
        )
        if name == "q":
            q = _qvalue(value)
        else:
            params[name] = value
    return MediaRange(kind, subtype, MappingProxyType(params), q)


@dataclass(frozen=True)
class SyntaxAcceptance:
    """Which transfer syntaxes a client accepts for parts of one media type, and how much.

    `explicit` maps a transfer syntax UID to its best q (q=0 entries exclude the syntax);
    `wildcard` is the q of `transfer-syntax=*` (any syntax, the stored one), 0 when absent.
    """

    explicit: Mapping[str, float]
    wildcard: float
    order: tuple[str, ...]  # syntaxes in header order, for ties

    def quality(self, transfer_syntax: str) -> float:
        if transfer_syntax in self.explicit:
            return self.explicit[transfer_syntax]
        return self.wildcard

    def accepts(self, transfer_syntax: str) -> bool:
        return self.quality(transfer_syntax) > 0

    @property
    def acceptable(self) -> bool:
        """Whether any syntax at all is acceptable."""
        return self.wildcard > 0 or any(q > 0 for q in self.explicit.values())

    def best(self, candidates: Iterable[str]) -> str | None:
        """The most wanted of `candidates` (highest q, then earliest in the header, then the
        order of `candidates`), or None when the client accepts none of them."""
        ranked: list[tuple[float, int, int, str]] = []
        for index, syntax in enumerate(candidates):
            q = self.quality(syntax)
            if q <= 0:
                continue
            position = self.order.index(syntax) if syntax in self.order else len(self.order)
            ranked.append((-q, position, index, syntax))
        return min(ranked)[3] if ranked else None


def syntax_acceptance(
    ranges: Sequence[MediaRange],
    part_types: Iterable[str] = ("application/dicom",),
    *,
    default_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
) -> SyntaxAcceptance:
    """The transfer syntaxes accepted for multipart/related parts of one of `part_types`.

    PS3.18 §8.7.3: `multipart/related; type="application/dicom"; transfer-syntax=<uid>` names a
    syntax; without `transfer-syntax` the default (Explicit VR Little Endian) is meant;
    `transfer-syntax=*` accepts any. Wildcard ranges (`*/*`, `multipart/*`) and
    `multipart/related` without `type` mean the default syntax of the resource.
    """
    wanted = {t.lower() for t in part_types}
    explicit: dict[str, float] = {}
    wildcard = 0.0
    order: list[str] = []
    for media in ranges:
        if not media.matches("multipart/related"):
            continue
        part_type = media.params.get("type", "").lower()
        if part_type and part_type not in wanted:
            continue
        syntax = media.params.get("transfer-syntax", default_syntax)
        if syntax == ANY_SYNTAX:
            wildcard = max(wildcard, media.q)
            continue
        if syntax not in order:
            order.append(syntax)
        # The most specific mention wins; among equals the highest q (RFC 9110 §12.5.1).
        explicit[syntax] = max(explicit.get(syntax, 0.0), media.q) if media.q > 0 else 0.0
    return SyntaxAcceptance(MappingProxyType(explicit), wildcard, tuple(order))


def accepts_media_type(ranges: Sequence[MediaRange], media_type: str) -> float:
    """The q with which a single (non-multipart) `media_type` is accepted, 0 when it is not."""
    best = 0.0
    matched = False
    for media in ranges:
        if media.matches(media_type):
            matched = True
            best = max(best, media.q)
    return best if matched else 0.0
