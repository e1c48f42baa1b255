"""Where a configuration came from, and the one function that turns what Snakemake loaded into the
validated config and the grid (rules/common.smk calls it; so do workflow_scripts/check_config.py and
the config fuzzer, tests/test_fuzz_config.py, so that what they check is what a dry run does).

Snakemake merges, in order: the config files (`--configfile`, a profile's `configfile:`, or else the
Snakefile's config.yaml), then the `--config` entries, which come from the command line or, when the
command line gives none, from the last profile whose `config:` sets them. An error names the part that
set the field: the file(s), the command line, or the profile.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from . import config as rconfig
from . import grid as rgrid
from .campaign import CONFIRM  # a switch, not a setting (common.smk pops it)


class Source(str):
    """The description of a configuration's origin (`str(self)` names every part; errors of the
    grid, which can span fields, use it) and `of(key)`: the part that set one top-level key."""

    files: tuple[str, ...]
    file_keys: dict[str, frozenset]
    cli_keys: tuple[str, ...]
    profile: str | None

    def __new__(cls, files=(), file_keys=None, cli_keys=(), profile=None):
        files = tuple(map(str, files)) or ("config.yaml",)
        text = ", ".join(files)
        if cli_keys:
            text += f" (with {'config: ' if profile else '--config '}{', '.join(cli_keys)}"
            text += f" from {profile})" if profile else ")"
        self = super().__new__(cls, text)
        self.files, self.cli_keys, self.profile = files, tuple(cli_keys), profile
        self.file_keys = {f: frozenset(k) for f, k in (file_keys or {}).items()}
        return self

    def __reduce__(self):  # copy and pickle rebuild it from its parts, not from its text
        return Source, (self.files, self.file_keys, self.cli_keys, self.profile)

    def of(self, key) -> str:
        if key in self.cli_keys:
            return f"{self.profile} (config: {key})" if self.profile else str(self)
        setters = [f for f in self.files if key in self.file_keys.get(f, ())]
        return ", ".join(setters) if setters else str(self)


def checked(config: dict, cli: dict, files, source: Source | None = None) -> tuple[dict, rgrid.Grid, Source]:
    """(validated config, grid, source) of what Snakemake loaded: `config` merged from `files` and the
    `--config` entries `cli`. Each file is read again by the workflow's own reader first (keys given
    twice, YTE templates, a top level that is not a mapping). Raises rconfig.ConfigError naming the part
    that set the field, the field and the value."""
    file_keys = {str(f): set(rconfig.check_file(f)) for f in files}
    if source is None:
        source = Source(files, file_keys, sorted(k for k in cli if k != CONFIRM))
    cfg = rconfig.validate(rconfig.typed_cli_values(dict(config), cli), source)
    return cfg, rgrid.build(cfg, source), source


def explained(config: dict, cli: dict, files, basedir, argv=None) -> tuple[dict, rgrid.Grid, Source]:
    """checked(), and on an error the same check again with the `--config` keys traced to the command
    line or the profile that set them (read from Snakemake's arguments, `argv`; only when there is an
    error: it costs Snakemake's argument parser)."""
    try:
        return checked(config, cli, files)
    except rconfig.ConfigError:
        pass
    keys = sorted(k for k in cli if k != CONFIRM)
    profile = _profile_setting_config(basedir, argv) if keys else None
    file_keys = {str(f): set(rconfig.check_file(f)) for f in files}
    return checked(config, cli, files, Source(files, file_keys, keys, profile))


def _profile_setting_config(basedir, argv=None) -> str | None:
    """The profile file whose `config:` Snakemake used, or None when the command line gave `--config`
    itself (which replaces every profile's) or nothing can be told. Profiles are found as Snakemake
    finds them (snakemake.cli.get_profile_dir): each `--profile` (or $SNAKEMAKE_PROFILE), then the
    workflow profile (`--workflow-profile`, default profiles/default); the last that sets it wins."""
    try:
        from snakemake.cli import get_argument_parser, get_profile_dir

        args, _ = get_argument_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    except (Exception, SystemExit):  # not Snakemake's command line (an API call): say no more
        return None
    if args.config:
        return None
    profiles = list(args.profile or [])
    if not profiles and os.environ.get("SNAKEMAKE_PROFILE"):
        profiles = [os.environ["SNAKEMAKE_PROFILE"]]
    if args.workflow_profile != "none":
        name = Path(args.workflow_profile or "default")
        for cand in (name, Path("profiles") / name, Path(basedir) / "profiles" / name):
            if cand.exists():
                profiles.append(str(cand))
                break
    found = None
    for p in profiles:
        entry = _find_profile(get_profile_dir, p)
        if entry is None:
            continue
        try:
            with open(entry[1]) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("config"):
            found = str(entry[1])
    return found


def _find_profile(get_profile_dir, name: str):
    """(folder, file) of a profile as Snakemake found it: relative to the working directory, or, under
    `--directory`, to the one Snakemake was started in ($PWD)."""
    if name == "none":
        return None
    here = os.getcwd()
    try:
        for base in dict.fromkeys([here, os.environ.get("PWD") or here]):
            if os.path.isdir(base):
                os.chdir(base)
                entry = get_profile_dir(name)
                if entry is not None:
                    return entry[0], Path(base, entry[1]) if base != here else entry[1]
    finally:
        os.chdir(here)
    return None
