"""``python -m api_bridge``: run the bridge with settings from ``PQKMS_*``."""

import sys

from api_bridge.main import run
from api_bridge.tls import BridgeTlsError
from worker.config import get_settings
from worker.nats_security import NatsSecurityError

if __name__ == "__main__":
    try:
        run(get_settings())
    except (BridgeTlsError, NatsSecurityError) as exc:
        sys.exit(f"pqkms bridge: {exc}")
