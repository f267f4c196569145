"""Tests against a real Kubernetes control plane (see scripts/cluster/ and cluster.py)."""
