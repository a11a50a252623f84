"""Samplers (being written)."""
