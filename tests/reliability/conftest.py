"""Fixtures of the reliability suite (defined in reliability_helpers.py, which the tests import)."""

from reliability_helpers import reference_run  # noqa: F401  (a session fixture)
