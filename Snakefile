# rethink-pretraining: "Rethinking ImageNet Pre-training" (He, Girshick, Dollar, ICCV 2019)
# as a Snakemake workflow. The grid, the plan and every path come from workflow_scripts/rethink.
import os

from snakemake.utils import min_version

min_version("9.0")

# config.yaml is the paper's grid; `--configfile X` (or a profile that sets it) replaces it
# instead of being merged into it, so configs/tiny.yaml is a whole configuration.
# (config.yaml of the working directory if there is one, else the one beside this Snakefile)
if not workflow.overwrite_configfiles:

    configfile: "config.yaml" if os.path.exists("config.yaml") else os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
