"""Kubernetes operator for ShuffleNetTrainingJob resources."""
