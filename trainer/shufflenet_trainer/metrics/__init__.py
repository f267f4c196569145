"""The Prometheus exporter of a training run (metric names shared with the operator)."""
