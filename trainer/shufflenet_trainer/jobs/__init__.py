"""Job tooling around the trainer, torch-free: run a job manifest locally, start and
supervise ranks, show job status."""
