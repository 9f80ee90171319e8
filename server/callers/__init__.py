"""Callers: who is asking (identity.py), what each may spend and how much
it has (ledger.py), and the counts shared by a fleet (fleet.py). Fair
share of a contended tier is admission's (server/tiers/admission.py)."""
