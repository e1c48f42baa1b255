# One job per milestone: COCO evaluation (pycocotools) of the checkpoint at that iteration on the
# val set, written as one metrics JSON (schema: workflow_scripts/rethink/metrics.py). Its own job,
# so the next training segment does not wait for it.


rule evaluate:
    input:
        unpack(lambda wc: specs.eval_input(plan.milestone(wc.family, wc.line, int(wc.iter)))),
        config=SNAPSHOT,
    output:
        paths.metrics("{family}", "{line}", "{iter}"),
    log:
        paths.log("evaluate", "{family}", "{line}", "iter_{iter}"),
    conda:
        "../envs/train.yaml"
    resources:
        **job_resources.eval_resources(),
    params:
        launcher=job_resources.single(PY),
        script=script("evaluate.py"),
        job=job("evaluate"),
    shell:
        "{params.launcher} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"


# The final checkpoint of a run whose experiment sets test_aug, evaluated a second time with
# multi-scale + flip test-time augmentation (paper Table 3). Evaluation only: nothing retrains.
use rule evaluate as evaluate_tta with:
    input:
        unpack(lambda wc: specs.eval_input(plan.tta_milestone(wc.family, wc.line, int(wc.iter)))),
        config=SNAPSHOT,
    output:
        paths.metrics("{family}", "{line}", "{iter}", tta=True),
    log:
        paths.log("evaluate", "{family}", "{line}", "iter_{iter}-tta"),
    resources:
        **job_resources.eval_resources(tta=True),
    params:
        launcher=job_resources.single(PY),
        script=script("evaluate.py"),
        job=job("evaluate_tta"),
