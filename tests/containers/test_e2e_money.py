"""tests/e2e/test_money.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_money import *  # noqa: F403
