"""The API layer's defaults: what a client or limiter uses when its caller names nothing.

A leaf module (no import), so that `settings.py` can declare these values as the defaults of its
settings without loading httpx or asyncio.
"""

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
GET_RETRIES = 5  # retries of a transient failure
# Requests that may leave at once before the pace applies. Below the capacity of the small token
# buckets platforms use (5 is common), so the bucket keeps a token or two for the network's jitter.
BURST = 3
