"""The mark of a refusal caused by the box's own bug rather than by the input.

A parser of untrusted input must always answer (an HL7 AR, a refused whitelist, an unreadable
KOS page), so it turns an unexpected exception into its own error type. That error also carries
`InternalError`, so logs, the fuzz targets and the property tests can tell a bug from a bad input:
they let expected refusals through and report the internal ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InternalError(Exception):
    """Mixed into a parser's error type when the refusal comes from an unexpected exception."""


@contextmanager
def refusals_only(*expected: type[Exception]) -> Iterator[None]:
    """Swallow the `expected` refusals of a parser but not its internal errors (fuzzing)."""
    try:
        yield
    except InternalError:
        raise
    except expected:
        pass
