"""Fixtures of the operator/CRD integration tests (defined in operator_helpers.py), made
available here once so that their session scope holds across test modules."""

from tests.integration.operator_helpers import operator, ops_cluster, ops_env

__all__ = ["operator", "ops_cluster", "ops_env"]
