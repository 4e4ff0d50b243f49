"""tests/e2e/test_isolation.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_isolation import *  # noqa: F403
