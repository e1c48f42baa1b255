# One job per training segment (see workflow_scripts/rethink/plan.py): from the checkpoint at
# its start (or the init) to the checkpoint at its end. Periodic resume checkpoints go to
# P.resume_dir, outside the declared output, so a killed or timed-out job resumes there.


rule train_segment:
    input:
        unpack(lambda wc: P.segment_input(PLAN.segment(wc.family, wc.line, int(wc.iter)))),
    output:
        temp(P.checkpoint("{family}", "{line}", "{iter}")),
    log:
        P.log("train", "{family}", "{line}", "iter_{iter}"),
    params:
        spec=lambda wc: train_spec_json(wc.family, wc.line, wc.iter),
        launcher=lambda wc: P.launcher(PLAN.segment(wc.family, wc.line, int(wc.iter)), PY),
    resources:
        **P.train_resources(),
    conda:
        env("train")
    shell:
        "{params.launcher} {SCRIPTS:q}/train.py --spec {params.spec:q} > {log:q} 2>&1"


# The last segment of a run writes the run's model, kept outside temp(): adding an evaluation later
# (test_aug, another metric) evaluates it instead of retraining. Intermediate checkpoints stay temporary.
use rule train_segment as train_final with:
    input:
        unpack(lambda wc: P.segment_input(PLAN.final_segment(wc.run))),
    output:
        P.model("{run}"),
    log:
        P.log("train", "{run}", "model_final"),
    params:
        spec=lambda wc: final_spec_json(wc.run),
        launcher=lambda wc: P.launcher(PLAN.final_segment(wc.run), PY),
