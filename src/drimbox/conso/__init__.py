"""The Conso role: contextual launch, the patient's exam history from the DMP, retrieval from
Source boxes, export to the local PACS, XDM.

Modules: `launch` (the RIS/DPI form → `LaunchContext`), `history` (TD0.2/TD0.3, ITI-18, ITI-43 →
`Exam` rows), `retrieval` (WADO-RS to whitelisted Source boxes over mutual TLS, streamed into the
cache), `export` (C-STORE or STOW-RS to the local PACS under the local patient id), `xdm` (IHE
ITI-32 zip export and import). Shared vocabulary (`ConsoError`, audit and progress hooks) lives
in `common`. The role owns no HTTP route and no configuration: the web layer and the node wire
these functions.
"""

from drimbox.conso.common import ConsoError

__all__ = ["ConsoError"]
