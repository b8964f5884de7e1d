"""The official ANS test data (DRIM-M homologation datasets) bundled with the product.

Used by the demo, `drimbox selftest` and the tests. The files under `ans/` are copies, unchanged,
of the public ANS datasets (see `ans/README.md` for their provenance): never edit them.
"""

from __future__ import annotations

from pathlib import Path

ANS_DIR = Path(__file__).parent / "ans"


def ans_file(relative: str) -> Path:
    """Path of a bundled sample, e.g. `ans_file("hl7/CR_C-ORU.hl7")`."""
    path = ANS_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"bundled ANS sample missing: {relative}")
    return path
