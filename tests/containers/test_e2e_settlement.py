"""tests/e2e/test_settlement.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_settlement import *  # noqa: F403
