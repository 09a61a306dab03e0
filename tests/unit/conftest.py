"""Fixtures shared by the unit tests."""

from stand_in_hub import hub

__all__ = ["hub"]
