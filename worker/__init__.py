"""The pqkms worker: FastStream subscribers over plain async services."""
