# Results: every metrics JSON -> one table -> the paper's tables and figures. The grid summary.

localrules:
    grid,
    collect,
    report,


rule collect:
    input:
        P.all_metrics(),
    output:
        P.metrics_table,
    log:
        P.log("report", "collect"),
    params:
        results=P.results,
    conda:
        "../envs/report.yaml"
    shell:
        "{PY} {SCRIPTS}/collect.py --results {params.results} --out {output} > {log} 2>&1"


rule report:
    input:
        P.metrics_table,
    output:
        P.report_outputs(),
    log:
        P.log("report", "report"),
    params:
        results=P.results,
    conda:
        "../envs/report.yaml"
    shell:
        "{PY} {SCRIPTS}/report.py --metrics {input} --results {params.results} > {log} 2>&1"


rule grid:
    # no output: `snakemake grid` always prints the current state of the plan
    params:
        cfg=spec_json(CFG),
        source=CONFIG_SOURCE,
    shell:
        "{PY} {SCRIPTS}/grid_summary.py --config-json {params.cfg:q} --source {params.source:q}"
