"""Fixtures of the air-gapped tier: the end-to-end tier's CLI runner and engine wheel."""

from e2e.conftest import engine_wheel, run_cli  # noqa: F401 - fixtures re-exported
