# Datasets: synthetic COCO-format sets made here; seeded subsets of COCO; VOC converted to COCO JSON.


rule prepare_data:
    input:
        identity=lambda wc: identities.data_identity(wc.data),
        config=SNAPSHOT,
    output:
        paths.dataset("{data}"),
    log:
        paths.log("data", "{data}"),
    conda:
        "../envs/train.yaml"
    resources:
        runtime=60,
        mem_mb=8000,
    params:
        py=PY,
        script=script("prepare_data.py"),
        job=job("prepare_data"),
    shell:
        "{params.py:q} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"


rule prepare_pretrain_data:
    input:
        identity=lambda wc: identities.pretrain_data_identity(wc.init),
        config=SNAPSHOT,
    output:
        paths.pretrain_dataset("{init}"),
    log:
        paths.log("data", "pretrain-{init}"),
    conda:
        "../envs/train.yaml"
    resources:
        runtime=30,
    params:
        py=PY,
        script=script("prepare_data.py"),
        job=job("prepare_pretrain_data"),
    shell:
        "{params.py:q} {params.script:q} --config {input.config:q} --job {params.job:q} > {log:q} 2>&1"
