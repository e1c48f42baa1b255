#!/usr/bin/env python3
"""Install this repository's SLURM profile as the user's snakemake profile ``slurm``.

``snakemake --profile slurm`` looks for a folder ``slurm`` in the current directory,
in ``$XDG_CONFIG_HOME/snakemake`` (default ``~/.config/snakemake``) and in
``/etc/xdg/snakemake`` -- not in ``profiles/``. This puts ``profiles/slurm`` at
``<user config dir>/snakemake/slurm`` so the command works as typed::

    python workflow_scripts/install_profile.py            # symlink (follows repo edits)
    python workflow_scripts/install_profile.py --copy     # independent copy to edit
    python workflow_scripts/install_profile.py --force    # replace a different profile
                                                          # (the old one is kept as slurm.bak-<time>)
    snakemake --profile slurm -n                          # check: dry-run on the cluster

Standard library only. Exit status: 0 installed or already installed, 1 refused.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def user_config_dir() -> Path:
    """Snakemake's user profile folder, found the way snakemake finds it."""
    try:  # what snakemake itself uses (installed with snakemake); optional
        from platformdirs import AppDirs

        return Path(AppDirs("snakemake", "snakemake").user_config_dir)
    except ImportError:  # same rule on Linux without platformdirs
        pass
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "snakemake"


def same_tree(a: Path, b: Path) -> bool:
    """True when two folders hold the same files with the same contents."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="slurm", help="profile name (default: slurm)")
    ap.add_argument(
        "--source",
        type=Path,
        default=REPO / "profiles" / "slurm",
        help="profile folder to install (default: profiles/slurm of this repo)",
    )
    ap.add_argument(
        "--dest-dir",
        type=Path,
        default=None,
        help="profile folder to install into (default: $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)",
    )
    ap.add_argument("--copy", action="store_true", help="copy the files instead of symlinking the folder")
    ap.add_argument(
        "--force", action="store_true", help="replace a different existing profile (kept as <name>.bak-<time>)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    src = args.source.resolve()
    if not (src / "profile.yaml").is_file():
        print(f"error: {src} has no profile.yaml", file=sys.stderr)
        return 1
    dest_dir = (args.dest_dir or user_config_dir()).expanduser()
    dest = dest_dir / args.name
    how = "copy" if args.copy else "symlink"

    if dest.is_symlink() or dest.exists():
        is_link = dest.is_symlink()
        identical = (is_link and dest.resolve() == src) or (dest.is_dir() and not is_link and same_tree(src, dest))
        if identical and is_link != args.copy:
            print(f"profile '{args.name}' already installed ({how}): {dest} -> {src}")
            return 0
        if not identical and not args.force:
            what = (
                f"a symlink to {os.readlink(dest)}" if is_link else "a different profile" if dest.is_dir() else "a file"
            )
            print(
                f"refusing to overwrite {dest}: it is {what}.\n"
                f"Compare it with {src}, then rerun with --force (the old one is kept "
                f"as {dest.name}.bak-<time>) or install under another --name.",
                file=sys.stderr,
            )
            return 1
        if is_link or identical:
            # nothing is lost: a symlink, or a copy identical to the source
            if is_link or dest.is_file():
                dest.unlink()
            else:
                shutil.rmtree(dest)
        else:
            backup = dest.with_name(f"{dest.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            dest.rename(backup)
            print(f"kept the previous profile as {backup}")

    dest_dir.mkdir(parents=True, exist_ok=True)
    if args.copy:
        shutil.copytree(src, dest)
    else:
        dest.symlink_to(src, target_is_directory=True)
    print(f"installed profile '{args.name}' ({how}): {dest} -> {src}")
    where = (dest / "profile.yaml") if args.copy else (src / "profile.yaml")
    print(
        f"next: set slurm_partition / slurm_account in {where} if your cluster needs "
        f"them, then check with: snakemake --profile {args.name} -n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
