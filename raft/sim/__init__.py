"""Deterministic simulation and verification tools for the Raft core."""
