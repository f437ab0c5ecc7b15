"""``adapt3d adapt``: train adapters on a frozen core from an experiment config."""

from __future__ import annotations

import argparse

NAME = "adapt"
HELP = "adapt a frozen core to a new modality (train adapters), tracking CT Dice retention"
DESCRIPTION = """\
Train small adapters on a frozen core, as configured by an experiment: a YAML file or the name of
a packaged preset (`adapt3d config list`), with optional key=value overrides:

  0. the whole experiment is checked (types, ranges, paths, class names, adapter targets):
     every problem is listed at once and nothing is written;
  1. the frozen core is evaluated (N-click protocol) on the target test items and the CT
     reference set ("before");
  2. adapters are trained with iterative click training (Lightning; checkpoints each epoch);
     every validation logs CT Dice retention = adapted / frozen Dice, and the guard stops or
     keeps the best checkpoint whose retention meets the threshold;
  3. the adapted model is evaluated again ("after") and the run directory is written:
     config.yaml, env.json, metrics.json, retention.csv, adapter/, predictions/, logs/.

The run works in <output_dir>/<name>.partial and is renamed to <output_dir>/<name> when it has
finished. An interrupted run continues with the same command and --resume.

Overrides: paths are relative to the working directory (paths inside a YAML file are relative
to that file); a section may be swapped whole with a preset or a file: adapter=lora-r32,
adapter=my_adapter.yaml, core=demo-tiny.

examples:
  adapt3d config init ct_to_mr_sam_med3d --out my_exp.yaml     # a template to edit
  adapt3d adapt --config my_exp.yaml
  adapt3d adapt --config my_exp.yaml adapter.method=dora adapter.rank=8 name=dora_r8
  adapt3d adapt --config my_exp.yaml adapter=adapter-r64 name=adapter_r64
  adapt3d adapt --config my_exp.yaml train.devices=2 train.strategy=ddp       # multi-GPU (DDP)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="YAML|PRESET", help="experiment file, or the name of a packaged experiment preset")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys; section=PRESET|FILE.yaml swaps a section)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (<name>.partial) from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over: discard an interrupted run, replace a finished one when the new one finishes")


def run(args: argparse.Namespace) -> int:
    from adapt3d.errors import ConfigError
    from adapt3d.train.checks import check_experiment
    from adapt3d.train.config import load_experiment, problem_summary

    cfg = load_experiment(args.config, list(args.overrides))
    problems = check_experiment(cfg)  # before importing the training stack: a bad setting is refused fast
    if problems:
        raise ConfigError(problem_summary(f"experiment {cfg.name!r}", problems))
    from adapt3d.train.run import run_adaptation

    run_dir = run_adaptation(cfg, overwrite=args.overwrite, resume=args.resume)
    if run_dir is not None:
        from adapt3d.summary import print_summary

        print_summary(run_dir)
    return 0
