"""Modelseal: sealed, licensed, metered model serving on Kubernetes."""
