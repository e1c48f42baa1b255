# Results: every metrics JSON -> one table -> the paper's tables and figures. The grid summary.
# The scripts take the results folder from the config snapshot.


localrules:
    grid,
    speeds,
    collect,
    report,
    figures,


rule collect:
    input:
        paths.all_metrics(),
        identity=identities.table_identity(),
        config=SNAPSHOT,
    output:
        # update(): Snakemake keeps the previous table while collect runs and restores it if collect fails
        update(paths.metrics_table),
    log:
        paths.log("report", "collect"),
    conda:
        "../envs/report.yaml"
    params:
        py=PY,
        script=script("collect.py"),
    shell:
        "{params.py:q} {params.script:q} --planned --config {input.config:q} --job collect "
        "--out {output:q} > {log:q} 2>&1"


rule report:
    input:
        metrics=paths.metrics_table,
        published=PUBLISHED,
        config=SNAPSHOT,
    output:
        [
            report(
                e["path"],
                caption=f"../{e['caption']}" if e["caption"] else None,
                category=e["category"],
                subcategory=e["subcategory"],
            )
            for e in report_targets.report_entries(paths)
        ],
    log:
        paths.log("report", "report"),
    conda:
        "../envs/report.yaml"
    params:
        py=PY,
        script=script("report.py"),
    shell:
        "{params.py:q} {params.script:q} --metrics {input.metrics:q} --published {input.published:q}"
        " --config {input.config:q} --job report > {log:q} 2>&1"


rule figures:
    # no output: `snakemake figures` rebuilds metrics.csv, tables and figures from whatever
    # metrics JSONs exist under results/ (a partial grid, or results/ copied off a cluster);
    # it schedules no training or evaluation. Its log is printed too.
    input:
        published=PUBLISHED,
        config=SNAPSHOT,
    log:
        paths.log("report", "figures"),
    conda:
        "../envs/report.yaml"
    params:
        py=PY,
        collect=script("collect.py"),
        report=script("report.py"),
    shell:
        "({params.py:q} {params.collect:q} --config {input.config:q} && {params.py:q} {params.report:q}"
        " --published {input.published:q} --config {input.config:q}) 2>&1 | tee {log:q}"


rule grid:
    # no output: `snakemake grid` always prints the current state of the plan (and logs it)
    input:
        config=SNAPSHOT,
    log:
        paths.log("report", "grid"),
    conda:
        "../envs/report.yaml"
    params:
        py=PY,
        script=script("grid_summary.py"),
    shell:
        "{params.py:q} {params.script:q} --config {input.config:q} 2>&1 | tee {log:q}"


rule speeds:
    # no output: `snakemake speeds` writes <results>/campaign/measured_speeds.yaml, the config's
    # seconds_per_iter and eval_seconds with what the ledger measured; review it, pass it with --configfile
    input:
        config=SNAPSHOT,
    log:
        paths.log("report", "speeds"),
    conda:
        "../envs/report.yaml"
    params:
        py=PY,
        script=script("grid_summary.py"),
    shell:
        "{params.py:q} {params.script:q} --config {input.config:q} --speeds 2>&1 | tee {log:q}"
