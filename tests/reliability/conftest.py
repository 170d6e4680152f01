"""Fixtures of the reliability suite (defined in reliability_helpers.py, which the tests import)."""

from reliability_helpers import pretrain_reference, reference_run  # noqa: F401  (session fixtures)
