"""Session-scoped fixtures for the real test servers live in tests/fixtures/, one module each."""

pytest_plugins = [
    "tests.fixtures.kube",
    "tests.fixtures.vault",
    "tests.fixtures.triton",
    "tests.fixtures.redis",
    "tests.fixtures.s3",
]
