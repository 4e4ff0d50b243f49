"""tests/e2e/test_premiums.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_premiums import *  # noqa: F403
