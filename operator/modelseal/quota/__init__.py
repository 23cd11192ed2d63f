"""Pure license and quota policy: license format, token bucket, windows, output policy.

No I/O here (an import contract enforces it); the gateway and the counter stores use it.
"""
