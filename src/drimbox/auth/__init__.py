"""Users and tokens: Pro Santé Connect sessions and the verification of bearer tokens."""
