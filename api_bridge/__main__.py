"""``python -m api_bridge``: run the bridge with settings from ``PQKMS_*``."""

from api_bridge.main import run
from worker.config import get_settings

if __name__ == "__main__":
    run(get_settings())
