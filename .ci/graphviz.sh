#!/usr/bin/env bash
# graphviz's `dot`, to render `snakemake --rulegraph` in the tests. Idempotent.
set -euo pipefail
command -v dot >/dev/null 2>&1 && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends graphviz
