"""rethink_lab: the laboratory the tests and benchmarks share (installed with the project, beside
``rethink``; pyproject.toml maps it here): a private SLURM cluster with its faults
(slurm_cluster, slurm_faults), the campaign supervisor and fault injector of the rehearsal
(campaign_faults), and the config and data fuzzers (fuzz_config, fuzz_data)."""
