"""``python -m worker``: one worker from PQKMS_* settings."""

from worker.config import get_settings
from worker.main import run

run(get_settings())
