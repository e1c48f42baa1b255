# Datasets: synthetic COCO-format sets made here; seeded subsets of COCO; VOC converted to COCO JSON.


rule prepare_data:
    input:
        identity=lambda wc: P.data_identity(wc.data),
    output:
        P.dataset("{data}"),
    log:
        P.log("data", "{data}"),
    params:
        spec=lambda wc: spec_json(P.data_spec(wc.data)),
    resources:
        runtime=60,
        mem_mb=8000,
    conda:
        env("train")
    shell:
        "{PY:q} {SCRIPTS:q}/prepare_data.py --spec {params.spec:q} > {log:q} 2>&1"


rule prepare_pretrain_data:
    input:
        identity=lambda wc: P.pretrain_data_identity(wc.init),
    output:
        P.pretrain_dataset("{init}"),
    log:
        P.log("data", "pretrain-{init}"),
    params:
        spec=lambda wc: spec_json(P.pretrain_data_spec(wc.init)),
    resources:
        runtime=30,
    conda:
        env("train")
    shell:
        "{PY:q} {SCRIPTS:q}/prepare_data.py --spec {params.spec:q} > {log:q} 2>&1"
