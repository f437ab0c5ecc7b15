"""``adapt3d config``: list the presets, show a resolved experiment, check it, or write a template."""

from __future__ import annotations

import argparse

NAME = "config"
HELP = "list presets, show or check a resolved experiment, write an editable template"
DESCRIPTION = """\
  adapt3d config list                                   the packaged presets (experiment, core, adapter)
  adapt3d config show --config EXP [key=value ...]      the resolved experiment as YAML
  adapt3d config check --config EXP [key=value ...]     every problem of the experiment (data, classes,
                                                        checkpoint, targets), without running it
  adapt3d config init [--config EXP] --out my_exp.yaml  a self-contained copy to edit anywhere: presets
                                                        inlined, paths absolute (default EXP:
                                                        ct_to_mr_sam_med3d, the lab template)

EXP is a YAML file or the name of an experiment preset (e.g. ct_to_mr_sam_med3d).
"""


ACTIONS = {
    "list": "the packaged presets",
    "show": "the resolved experiment as YAML",
    "check": "every problem of the experiment, without running it",
    "init": "write a self-contained template to edit",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in ACTIONS.items():
        q = sub.add_parser(action, help=text, description=text)
        if action == "list":
            continue
        q.add_argument("--config", metavar="YAML|PRESET", required=action != "init",
                       help="the experiment: a file or a preset name" + (" (default: ct_to_mr_sam_med3d)" if action == "init" else ""))
        q.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        if action == "init":
            q.add_argument("--out", required=True, metavar="FILE.yaml", help="where to write the template")
            q.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _header(source: str) -> str:
    return (f"# adapt3d experiment, written by `adapt3d config init` from {source}.\n"
            "# Every setting is here (presets inlined, paths absolute): edit it, then\n"
            "#   adapt3d config check --config THIS.yaml && adapt3d adapt --config THIS.yaml\n")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt3d.errors import ConfigError
    from adapt3d.presets import KINDS, preset_names
    from adapt3d.train.config import config_yaml, load_experiment, problem_summary

    if args.action == "list":
        for kind in KINDS:
            print(f"{kind}: {', '.join(preset_names(kind))}")
        return 0
    if args.action == "init":
        source = args.config or "ct_to_mr_sam_med3d"
        cfg = load_experiment(source, list(args.overrides))
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out}: already exists (choose another --out, or --overwrite)")
        from adapt3d.atomic import atomic_file

        with atomic_file(out) as tmp:
            tmp.write_text(_header(source) + config_yaml(cfg))
        print(f"wrote {out}")
        return 0
    cfg = load_experiment(args.config, list(args.overrides))
    if args.action == "show":
        print(config_yaml(cfg), end="")
        return 0
    from adapt3d.train.checks import check_experiment

    problems = check_experiment(cfg)
    if problems:
        raise ConfigError(problem_summary(f"experiment {cfg.name!r}", problems))
    print(f"experiment {cfg.name!r}: no problems found")
    return 0
