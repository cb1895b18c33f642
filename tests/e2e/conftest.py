"""Fixtures of the real-CLI tests (tests/e2e/test_cli_*.py): one gateway in front of every fake."""

from tests.e2e.cli_stack import cli_stack, stack

__all__ = ["cli_stack", "stack"]
