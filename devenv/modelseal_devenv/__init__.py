"""Real test servers (Kubernetes, Vault, Triton, Redis, S3) on 127.0.0.1.

Used by the tests, `make env-check` and `make demo`.
"""
