"""tests/e2e/test_public_receipts.py with every service in a container (tests/containers/conftest.py)."""

from tests.e2e.test_public_receipts import *  # noqa: F403
