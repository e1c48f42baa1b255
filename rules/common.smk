# The one place that turns the config into the grid and plan, and holds every input function,
# path and wildcard constraint. Rules stay thin; logic lives in workflow_scripts/rethink.
import json
import os
import sys

SCRIPTS = os.path.join(str(workflow.basedir), "workflow_scripts")
sys.path.insert(0, SCRIPTS)

from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import paths as rpaths
from rethink.plan import Plan

CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or "config.yaml"
try:
    CFG = rconfig.validate(dict(config), CONFIG_SOURCE)
    GRID = rgrid.build(CFG, CONFIG_SOURCE)
except rconfig.ConfigError as e:
    raise WorkflowError(str(e)) from None
PLAN = Plan(GRID)
P = rpaths.Paths(CFG, PLAN)
PY = sys.executable  # the interpreter running Snakemake runs the workflow's scripts too


wildcard_constraints:
    **rgrid.WILDCARD_CONSTRAINTS,


def final_targets():
    return P.final_targets()


def spec_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
