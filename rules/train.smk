# One job per training segment (see workflow_scripts/rethink/plan.py): from the checkpoint at
# its start (or the init) to the checkpoint at its end. Periodic resume checkpoints go to
# paths.resume_dir, outside the declared output, so a killed or timed-out job resumes there.


rule train_segment:
    input:
        unpack(lambda wc: specs.train_input(plan.segment(wc.family, wc.line, int(wc.iter)))),
        config=SNAPSHOT,
    output:
        temp(paths.checkpoint("{family}", "{line}", "{iter}")),
    log:
        paths.log("train", "{family}", "{line}", "iter_{iter}"),
    conda:
        "../envs/train.yaml"
    resources:
        **job_resources.train_resources(),
    params:
        script=script("train.py"),
        job=job("train_segment"),
        launcher=job_resources.launchers(PY),
    shell:
        "{params.launcher} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"


# The last segment of a run writes the run's model, kept outside temp(): adding an evaluation later
# (test_aug, another metric) evaluates it instead of retraining. Intermediate checkpoints stay temporary.
use rule train_segment as train_final with:
    input:
        unpack(lambda wc: specs.train_input(plan.final_segment(wc.run))),
        config=SNAPSHOT,
    output:
        paths.model("{run}"),
    log:
        paths.log("train", "{run}", "model_final"),
    params:
        script=script("train.py"),
        job=job("train_final"),
        launcher=job_resources.launchers(PY),
