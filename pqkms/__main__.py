"""``python -m pqkms``: the same as the ``pqkms`` command."""

from pqkms.cli import main

main()
