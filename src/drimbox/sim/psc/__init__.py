"""A Pro Santé Connect simulator (OpenID provider shaped like PSC's Keycloak realm) for tests and
the demo; never deploy it. `LocalPsc` runs it in a thread; `run_psc_simulator` behind
`drimbox sim psc`.
"""

from drimbox.sim.psc.provider import OAuthFailure, PscProvider
from drimbox.sim.psc.server import LocalPsc, PscSimulatorError, run_psc_simulator
from drimbox.sim.psc.settings import (
    DEFAULT_CLIENT,
    DEFAULT_USERS,
    LOW_ACR_USER,
    NO_STRUCTURE_PHYSICIAN,
    NURSE,
    OTHER_STRUCTURE_PHYSICIAN,
    PHARMACIST,
    RADIOLOGIST,
    TWO_SITES_PHYSICIAN,
    PscSimSettings,
    SimActivity,
    SimClient,
    SimExercice,
    SimUser,
    load_users,
)

__all__ = [
    "DEFAULT_CLIENT",
    "DEFAULT_USERS",
    "LOW_ACR_USER",
    "NO_STRUCTURE_PHYSICIAN",
    "NURSE",
    "OTHER_STRUCTURE_PHYSICIAN",
    "PHARMACIST",
    "RADIOLOGIST",
    "TWO_SITES_PHYSICIAN",
    "LocalPsc",
    "OAuthFailure",
    "PscProvider",
    "PscSimSettings",
    "PscSimulatorError",
    "SimActivity",
    "SimClient",
    "SimExercice",
    "SimUser",
    "load_users",
    "run_psc_simulator",
]
