"""The development webhook receiver (issue 14): plays a caller's webhook endpoint."""
