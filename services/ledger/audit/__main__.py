"""``python -m services.ledger.audit`` = ``yibao-audit``."""

import sys

from services.ledger.audit.cli import main

sys.exit(main())
