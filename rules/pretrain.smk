# The imagenet init: staged ImageNet weights on the cluster; a real pre-training on a synthetic
# classification set in the embedded default. Both record what the pre-training saw (Figure 2).


rule pretrain:
    input:
        data=P.pretrain_dataset("{init}"),
        identity=lambda wc: P.init_identity(wc.init, wc.backbone, wc.norm),
    output:
        weights=P.init_weights_pattern("pretrain"),
        cost=P.init_cost_pattern(),
    log:
        P.log("pretrain", "{init}-{backbone}-{norm}"),
    params:
        spec=lambda wc, input, output: spec_json(P.pretrain_spec(wc.init, wc.backbone, wc.norm)),
    wildcard_constraints:
        init=P.init_names_regex("pretrain"),
    resources:
        runtime=60,
    conda:
        env("train")
    shell:
        "{PY:q} {SCRIPTS:q}/pretrain.py --spec {params.spec:q} > {log:q} 2>&1"


rule stage_weights:
    input:
        identity=lambda wc: P.init_identity(wc.init, wc.backbone, wc.norm),
    output:
        weights=P.init_weights_pattern("staged"),
        cost=P.init_cost_pattern(),
    log:
        P.log("pretrain", "{init}-{backbone}-{norm}"),
    params:
        spec=lambda wc: spec_json(P.stage_spec(wc.init, wc.backbone, wc.norm)),
    wildcard_constraints:
        init=P.init_names_regex("staged"),
    resources:
        runtime=30,
    conda:
        env("train")
    shell:
        "{PY:q} {SCRIPTS:q}/stage_weights.py --spec {params.spec:q} > {log:q} 2>&1"
