# Results: every metrics JSON -> one table -> the paper's tables and figures. The grid summary.

localrules:
    grid,
    collect,
    report,
    figures,


rule collect:
    input:
        P.all_metrics(),
        identity=P.table_identity(),
    output:
        P.metrics_table,
    log:
        P.log("report", "collect"),
    params:
        results=P.results,
        cfg=spec_json(CFG),
    conda:
        env("report")
    shell:
        "{PY:q} {SCRIPTS:q}/collect.py --results {params.results:q} --out {output:q} --config-json {params.cfg:q} > {log:q} 2>&1"


rule report:
    input:
        P.metrics_table,
    output:
        [
            report(e["path"], caption=f"../{e['caption']}" if e["caption"] else None,
                   category=e["category"], subcategory=e["subcategory"])
            for e in P.report_entries()
        ],
    log:
        P.log("report", "report"),
    params:
        results=P.results,
        cfg=spec_json(CFG),
    conda:
        env("report")
    shell:
        "{PY:q} {SCRIPTS:q}/report.py --metrics {input:q} --results {params.results:q} --config-json {params.cfg:q} > {log:q} 2>&1"


rule figures:
    # no output: `snakemake figures` rebuilds metrics.csv, tables and figures from whatever
    # metrics JSONs exist under results/ (a partial grid, or results/ copied off a cluster);
    # it schedules no training or evaluation
    params:
        results=P.results,
        cfg=spec_json(CFG),
    conda:
        env("report")
    shell:
        "{PY:q} {SCRIPTS:q}/collect.py --results {params.results:q} --out {params.results:q}/metrics.csv"
        " --config-json {params.cfg:q} && "
        "{PY:q} {SCRIPTS:q}/report.py --metrics {params.results:q}/metrics.csv --results {params.results:q}"
        " --config-json {params.cfg:q}"


rule grid:
    # no output: `snakemake grid` always prints the current state of the plan
    params:
        cfg=spec_json(CFG),
        source=CONFIG_SOURCE,
    shell:
        "{PY:q} {SCRIPTS:q}/grid_summary.py --config-json {params.cfg:q} --source {params.source:q}"
