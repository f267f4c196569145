"""What the operator and the trainer agree on, importable by both without torch or kopf.

- `env`: the per-rank environment (torchrun-compatible plus the Ascend aliases), one
  `RankEnv` written on one side by `rank_env` and read on the other by `read_rank_env`.
- `ranktable`: the HCCL rank table (v1.0, A3 v1.2): `ranktable.format` (parse, dump,
  validate), `ranktable.build` (the operator's: a table from its pods' annotations) and
  `ranktable.mount` (a rank's: wait for its table, check it, copy it for HCCL).
- `crd`: the ShuffleNetTrainingJob CRD, its OpenAPI v3 schema as Python data (the one
  source of truth for the YAML under manifests/crd/ and for local validation).
- `schema`: a small structural-schema validator and defaulter for manifests.
- `job`: a validated job -> each rank's env and trainer command line.
- `jobspec`: docs/job-spec.md, the CRD's field reference, generated from `crd.SCHEMA` and
  its descriptions (`snjob render job-spec`).
- `exitcodes`: the trainer's exit codes, and which of them the operator retries.

Only the standard library (and PyYAML for rendering) is used here.
"""
