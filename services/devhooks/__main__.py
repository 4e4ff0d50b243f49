"""``python -m services.devhooks``: the development webhook receiver (see app.py)."""

from __future__ import annotations

import os
import sys

import uvicorn

from services.devhooks.app import ReceiverSettings, create_app
from shared.logging import configure_logging


def main() -> None:
    if os.environ.get("YIBAO_ENVIRONMENT", "development") == "production":
        sys.exit("the development webhook receiver does not run in production")
    settings = ReceiverSettings()
    configure_logging("devhooks", level=os.environ.get("YIBAO_LOG_LEVEL", "INFO"), json=True)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
