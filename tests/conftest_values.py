MAX_REQUEST_BYTES = 2 * 1024 * 1024
"""The HTTP body limit the integration server runs with."""
