"""The warden gateway: the enforcement point (identity, decision, execution, audit)."""
