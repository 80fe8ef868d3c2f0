"""What users run: the ``pqkms`` command line and the Python client."""
