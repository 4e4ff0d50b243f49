"""tests/e2e/test_journeys.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_journeys import *  # noqa: F403
