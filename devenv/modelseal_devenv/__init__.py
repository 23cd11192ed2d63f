"""Real test servers (Kubernetes, Vault, Triton, Redis, S3) started on 127.0.0.1 for tests, env-check and the demo."""
