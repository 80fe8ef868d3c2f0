"""NATS transport: parse → call a service → envelope. No crypto, no SQL."""
