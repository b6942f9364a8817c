"""Helpers shared by the test files (imported as ``from tests.support... import ...``; conftest.py
holds only the pytest fixtures)."""
