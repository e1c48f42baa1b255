"""Load and check the experiment configuration.

One place for the config's rules: the JSON schema (schemas/config.schema.yaml) checks
types, names and ranges and supplies defaults; :mod:`rethink.grid` checks what a schema
cannot (LR drops inside the schedule, axis values that exist, run ids that collide).
Every error names the config file, the field and the value.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration that must not start the workflow."""


def field_path(parts) -> str:
    """('experiments', 'x', 'seed', 0) -> 'experiments.x.seed[0]'."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<top level>"


# libyaml's parser where PyYAML has it (its wheels do): 10x faster than the pure-Python one, which
# every dry run and every job pays for the config and the schema
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_schema_cache: dict | None = None


def load_schema() -> dict:
    global _schema_cache
    if _schema_cache is None:
        with open(SCHEMA_PATH) as f:
            _schema_cache = yaml.load(f, Loader=_SafeLoader)
    return _schema_cache


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **merged}
    return schema


def _fill_defaults(instance: Any, schema: dict, root: dict, path: tuple) -> None:
    """Fill schema defaults in place. An experiment's recipe holds overrides only, so it
    gets no defaults (they would mask the top-level recipe)."""
    schema = _resolve(schema, root)
    if not isinstance(instance, dict):
        return
    props = schema.get("properties", {})
    for key, sub in props.items():
        if len(path) == 2 and path[0] == "experiments" and key == "recipe":
            continue
        sub_r = _resolve(sub, root)
        if key not in instance and "default" in sub_r:
            instance[key] = copy.deepcopy(sub_r["default"])
        if key in instance:
            _fill_defaults(instance[key], sub_r, root, path + (key,))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props:
                _fill_defaults(value, extra, root, path + (key,))


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _describe(error) -> str:
    where = field_path(error.absolute_path)
    full = repr(error.instance)
    if len(full) > 120:  # a 2,000-item list is named, not printed
        error.message = error.message.replace(full, _short(error.instance))
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}: {error.message}{hint}"
    if error.validator == "enum":
        return f"{where}: {_short(error.instance)} is not one of {error.validator_value}"
    if error.validator == "required":
        kind = error.instance.get("kind") if isinstance(error.instance, dict) else None
        return f"{where}: {error.message}" + (f" (for kind {kind})" if kind else "")
    if error.validator == "propertyNames":
        return f"{where}: key {_short(error.instance)} is not a valid name ({error.message})"
    return f"{where}: value {_short(error.instance)}: {error.message}"


def _check_moved_fields(config: dict, source: str) -> None:
    """Fields that moved get a message saying where to, not just "not allowed"."""
    if not isinstance(config, dict):
        return
    places = [("recipe", config.get("recipe"), None)]
    experiments = config.get("experiments")
    if isinstance(experiments, dict):
        places += [
            (f"experiments.{name}.recipe", (exp or {}).get("recipe"), name)
            for name, exp in experiments.items()
            if isinstance(exp, dict)
        ]
    for where, recipe, exp in places:
        if isinstance(recipe, dict) and recipe.get("tta"):  # false: harmless (a validated config has it)
            target = f"experiments.{exp}.test_aug" if exp else "experiments.<name>.test_aug"
            raise ConfigError(
                f"{source}: {where}.tta: test-time augmentation is evaluation-only, not part of how a run "
                f"trains; set {target}: true instead (the run trains once and its final checkpoint is "
                f"evaluated with and without it)"
            )


def blame(source, field) -> str:
    """The part of `source` that set `field` (a path of keys): a rethink.sources.Source names the
    file, profile or command line that set its top-level key; a plain string is returned as it is."""
    of = getattr(source, "of", None)
    return of(field[0]) if of is not None and len(field) else str(source)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_paths(config: dict, source: str) -> None:
    """workdir and results hold everything the workflow writes: a path that is empty, a control
    character (newline, tab, NUL) or the filesystem root is refused. Spaces, quotes, `$` and other
    shell characters are allowed: no path reaches a shell unquoted."""
    for key in ("workdir", "results"):
        value = config.get(key)
        if not isinstance(value, str):
            continue  # the schema says so
        if not value.strip():
            raise ConfigError(
                f"{blame(source, [key])}: {key}: value {value!r}: an empty path "
                "(its files would go to the filesystem root)"
            )
        if _CONTROL.search(value):
            raise ConfigError(f"{blame(source, [key])}: {key}: value {value!r}: a path with a control character")
        if os.path.normpath(value) in ("/", "//"):
            raise ConfigError(f"{blame(source, [key])}: {key}: value {value!r}: the filesystem root")


def _validator_class():
    """JSON Schema's validator, except that an integer is an int: JSON Schema counts 2.0 as one, and
    a float seed or size would reach run ids and file names as '2.0' (found by tests/test_fuzz_config.py)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def validate(config: dict, source: str = "config") -> dict:
    """Check `config` against the schema and return a copy with defaults filled in.

    Raises ConfigError naming `source`, the field and the value."""
    import jsonschema

    _check_moved_fields(config, source)
    schema = load_schema()
    validator = _validator_class()(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        # the deepest error of the first failing field is the most specific one
        best = jsonschema.exceptions.best_match(errors)
        others = [e for e in errors if e is not best][:4]
        lines = [f"{blame(source, e.absolute_path)}: {_describe(e)}" for e in [best, *others]]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema, schema, ())
    _check_paths(filled, source)
    from .rehearsal import normalize  # rehearsal: its settings filled in, its own workdir and results

    normalize(filled)
    return filled


def typed_cli_values(config: dict, cli: dict) -> dict:
    """`config` with the values given by `--config` typed as a YAML file would type them.

    Snakemake parses a top-level `--config key=value` as int, float, bool or text, but a mapping
    (`recipe={"batch": 4}`) with YAML's base loader, which keeps every scalar in it as text ('4');
    here such a scalar becomes what the same text means in a config file (4, 0.02, true, null).
    Only the leaves that came from the command line are touched."""

    def typed(value, given):
        if isinstance(given, dict) and isinstance(value, dict):
            return {k: typed(v, given[k]) if k in given else v for k, v in value.items()}
        if isinstance(given, list) and isinstance(value, list) and len(given) == len(value):
            return [typed(v, g) for v, g in zip(value, given)]
        if isinstance(given, str) and value == given:
            try:
                parsed = yaml.safe_load(given)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        return value

    return {k: typed(v, cli[k]) if k in cli else v for k, v in config.items()}


def recipe_defaults() -> dict:
    """Every recipe field at its schema default (the base of every run's recipe)."""
    schema = load_schema()
    recipe = _resolve(schema["$defs"]["recipe"], schema)
    out = {}
    for key, sub in recipe["properties"].items():
        sub = _resolve(sub, schema)
        out[key] = copy.deepcopy(sub.get("default"))
    return out


class _UniqueKeyLoader(_SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (YAML says
    keys are unique; PyYAML and Snakemake keep the last one silently)."""


def _unique_mapping(loader, node, deep=False):
    first: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` (its keys may be overridden here)
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key, (str, int, float, bool)) and key in first:
            raise ConfigError(
                f"{key_node.start_mark.name}: line {line}, column {key_node.start_mark.column + 1}: key {key!r} "
                f"is given twice in one mapping (first on line {first[key]}); YAML would keep only the last"
            )
        first.setdefault(key, line)
    return _SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path):
    """A YAML file as the workflow reads its configs: safe (no Python tags), unique keys. Errors
    name the file, the line and the column."""
    path = Path(path)
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


YTE_KEY = "__use_yte__"
_NOT_JSON = object()


def _read_json(path):
    """A config file that is JSON, keys given twice refused; _NOT_JSON if it is not JSON."""
    import json

    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"{path}: key {twice[0]!r} is given twice in one object; JSON readers keep only the last")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):  # not JSON, or not there: read_yaml says
        return _NOT_JSON


def check_file(path: str | Path) -> dict:
    """A config file as the workflow accepts it: YAML (or JSON) whose top level is a mapping, no key
    given twice, and no YTE template. Snakemake's loader evaluates a file that sets `__use_yte__: true`
    as a template, running the Python in it, before the workflow sees the result: the workflow refuses
    such a file, so that a shared config cannot run code unnoticed."""
    data = _read_json(path)  # as Snakemake's loader: JSON first (a tab is fine there, not in YAML)
    if data is _NOT_JSON:
        data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: an empty file; a config file is a mapping of fields (eval_period: 20, ...)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of fields (eval_period: 20, ...), "
            f"got {type(data).__name__} {str(data)[:60]!r}"
        )
    if YTE_KEY in data:
        raise ConfigError(
            f"{path}: {YTE_KEY}: value {data[YTE_KEY]!r}: a YTE template; Snakemake evaluates the Python code "
            f"in such a file while loading it, so the workflow takes plain YAML only. Render it yourself "
            f"after reading it (yte < {Path(path).name} > plain.yaml) and pass the rendered file"
        )
    return data


def load(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    return validate(check_file(path), str(path))
