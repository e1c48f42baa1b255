# The imagenet init: staged ImageNet weights on the cluster; a real pre-training on a synthetic
# classification set in the embedded default. Both record what the pre-training saw (Figure 2).


rule pretrain:
    input:
        data=paths.pretrain_dataset("{init}"),
        identity=lambda wc: identities.init_identity(wc.init, wc.backbone, wc.norm),
        config=SNAPSHOT,
    output:
        weights=paths.init_weights_pattern("pretrain"),
        cost=paths.init_cost_pattern(),
    log:
        paths.log("pretrain", "{init}-{backbone}-{norm}"),
    wildcard_constraints:
        init=paths.init_names_regex("pretrain"),
    conda:
        "../envs/train.yaml"
    resources:
        runtime=60,
    params:
        launcher=job_resources.single(PY),
        script=script("pretrain.py"),
        job=job("pretrain"),
    shell:
        "{params.launcher} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"


rule stage_weights:
    input:
        identity=lambda wc: identities.init_identity(wc.init, wc.backbone, wc.norm),
        config=SNAPSHOT,
    output:
        weights=paths.init_weights_pattern("staged"),
        cost=paths.init_cost_pattern(),
    log:
        paths.log("pretrain", "{init}-{backbone}-{norm}"),
    wildcard_constraints:
        init=paths.init_names_regex("staged"),
    conda:
        "../envs/train.yaml"
    resources:
        runtime=30,
    params:
        py=PY,
        script=script("stage_weights.py"),
        job=job("stage_weights"),
    shell:
        "{params.py:q} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"
