"""Distinguished names: parse and compare the DN of a whitelist entry with a certificate subject.

Owns `DistinguishedName`, built either from a string (the whitelist writes
`CN=…,OU=…,O=…,ST=…,C=FR`, the RFC 4514 order: most specific RDN first) or from an `x509.Name`
(read in that same RFC 4514 order, i.e. the reverse of its DER sequence). Two names are equal when
they hold the same RDNs in the same order with exactly the same values: the whitelist names one
certificate subject, so a subject with its RDNs reversed or a value in another case is another
name and is refused (a lenient match would let a look-alike certificate pass). Only the
writing of the string is normalised: attribute type spellings (`ST`, `S`, `2.5.4.8`), RFC 4514
escapes (`\\C3\\B4`), spaces around separators, and Unicode NFC (a composed and a decomposed
accent are the same character, not another case). It must not decide trust by itself (that is
`tls.PeerCheck`'s job).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from cryptography import x509

# Short names RFC 4514 and OpenSSL print, mapped to dotted OIDs so that "ST", "S" and
# "2.5.4.8" mean the same attribute.
_TYPES: dict[str, str] = {
    "CN": "2.5.4.3",
    "SN": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "S": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "T": "2.5.4.12",
    "TITLE": "2.5.4.12",
    "GN": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "ORGANIZATIONIDENTIFIER": "2.5.4.97",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
    "E": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
}
_NAMES = {"2.5.4.3": "CN", "2.5.4.11": "OU", "2.5.4.10": "O", "2.5.4.8": "ST", "2.5.4.6": "C"}
_OID = re.compile(r"^(?:OID\.)?([0-2](?:\.\d+)+)$", re.IGNORECASE)
_HEX = re.compile(r"[0-9A-Fa-f]{2}")


class DnSyntaxError(ValueError):
    """The string is not a distinguished name."""


def normalise_value(value: str) -> str:
    """A value as compared: Unicode NFC only (case and inner spaces are part of the name)."""
    return unicodedata.normalize("NFC", value)


def _strip_unescaped(raw: str) -> str:
    """Spaces around an RFC 4514 value are layout, unless escaped (`TEST\\ ` keeps its space)."""
    raw = raw.lstrip()
    stripped = raw.rstrip()
    if len(stripped) < len(raw) and stripped.endswith("\\"):
        backslashes = len(stripped) - len(stripped.rstrip("\\"))
        if backslashes % 2:
            return stripped + " "
    return stripped


def _attribute_type(name: str) -> str:
    name = name.strip()
    if match := _OID.match(name):
        return match.group(1)
    try:
        return _TYPES[name.upper()]
    except KeyError:
        raise DnSyntaxError(f"unknown attribute type {name!r}") from None


def _unescape(raw: str) -> str:
    """RFC 4514 value: `\\,` `\\+` … and `\\C3\\B4` (UTF-8 bytes as hex pairs)."""
    if raw.startswith("#"):
        # A BER-encoded value: kept as its hex text, so it only equals the same hex text.
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        if _HEX.fullmatch(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        elif i + 1 < len(raw):
            out += raw[i + 1].encode("utf-8")
            i += 2
        else:
            raise DnSyntaxError("trailing backslash")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DnSyntaxError("escaped bytes are not UTF-8") from exc


def _split(text: str, separators: str) -> list[str]:
    """Split on unescaped separators (a backslash protects the next character)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


Rdn = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DistinguishedName:
    """A DN as its RDNs in RFC 4514 order, each a set of (OID, value); `text` keeps the original
    for messages."""

    rdns: tuple[Rdn, ...]
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.rdns:
            raise DnSyntaxError("empty distinguished name")
        # The AVAs of a multi-valued RDN form a set (X.501): sorted so their order does not count.
        object.__setattr__(self, "rdns", tuple(tuple(sorted(rdn)) for rdn in self.rdns))

    @property
    def attributes(self) -> tuple[tuple[str, str], ...]:
        """Every (OID, value) pair, in order."""
        return tuple(pair for rdn in self.rdns for pair in rdn)

    @classmethod
    def parse(cls, text: str) -> DistinguishedName:
        """Parse `CN=…,OU=…,C=FR` (RFC 4514 escaping; `;` is accepted as a separator too)."""
        rdns: list[Rdn] = []
        for rdn in _split(text.strip(), ",;"):
            if not rdn.strip():
                raise DnSyntaxError(f"empty RDN in {text!r}")
            pairs: list[tuple[str, str]] = []
            for ava in _split(rdn, "+"):
                name, sep, value = ava.partition("=")
                if not sep:
                    raise DnSyntaxError(f"no '=' in {ava!r}")
                pairs.append(
                    (_attribute_type(name), normalise_value(_unescape(_strip_unescaped(value))))
                )
            rdns.append(tuple(pairs))
        return cls(tuple(rdns), text.strip())

    @classmethod
    def from_name(cls, name: x509.Name) -> DistinguishedName:
        # RFC 4514 writes the last RDN of the DER sequence first, as `rfc4514_string` does.
        rdns = [
            tuple(
                (attribute.oid.dotted_string, normalise_value(_as_text(attribute.value)))
                for attribute in rdn
            )
            for rdn in reversed(name.rdns)
        ]
        return cls(tuple(rdns), name.rfc4514_string())

    @classmethod
    def of(cls, value: str | x509.Name | x509.Certificate | DistinguishedName) -> DistinguishedName:
        """Whatever callers hold: a string, a name, a certificate (its subject) or a DN."""
        if isinstance(value, DistinguishedName):
            return value
        if isinstance(value, x509.Certificate):
            return cls.from_name(value.subject)
        if isinstance(value, x509.Name):
            return cls.from_name(value)
        return cls.parse(value)

    def values(self, short_name: str) -> list[str]:
        """Values of one attribute type (`"CN"`, `"OU"` …), in order."""
        oid = _attribute_type(short_name)
        return [value for key, value in self.attributes if key == oid]

    def __str__(self) -> str:
        if self.text:
            return self.text
        return ",".join(
            "+".join(f"{_NAMES.get(oid, oid)}={value}" for oid, value in rdn) for rdn in self.rdns
        )

    def matches(self, other: str | x509.Name | x509.Certificate | DistinguishedName) -> bool:
        return self.rdns == DistinguishedName.of(other).rdns


def _as_text(value: str | bytes) -> str:
    return value if isinstance(value, str) else "#" + value.hex()


def dn_equal(
    left: str | x509.Name | x509.Certificate | DistinguishedName,
    right: str | x509.Name | x509.Certificate | DistinguishedName,
) -> bool:
    """True when both designate the same name; a string that is not a DN never matches."""
    try:
        return DistinguishedName.of(left).matches(right)
    except DnSyntaxError:
        return False
