"""``adapt3d adapt``: train adapters on a frozen core from an experiment config."""

from __future__ import annotations

import argparse

NAME = "adapt"
HELP = "adapt a frozen core to a new modality (train adapters), tracking CT Dice retention"
DESCRIPTION = """\
Train small adapters on a frozen core, as configured by an OmegaConf YAML experiment
(configs/experiment/*.yaml) with optional key=value overrides:

  1. the frozen core is evaluated (N-click protocol) on the target test items and the CT
     reference set ("before");
  2. adapters are trained with iterative click training (Lightning; checkpoints each epoch);
     every validation logs CT Dice retention = adapted / frozen Dice, and the guard stops or
     keeps the best checkpoint whose retention meets the threshold;
  3. the adapted model is evaluated again ("after") and the run directory is written:
     config.yaml, env.json, metrics.json, retention.csv, adapter/, predictions/, logs/.

examples:
  adapt3d adapt --config configs/experiment/ct_to_mr_lora.yaml
  adapt3d adapt --config configs/experiment/ct_to_mr_lora.yaml adapter.method=dora adapter.rank=8 name=dora_r8
  adapt3d adapt --config exp.yaml train.devices=2 train.strategy=ddp       # multi-GPU (DDP)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="YAML", help="experiment config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run with the same name")


def run(args: argparse.Namespace) -> int:
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    cfg = load_experiment(args.config, list(args.overrides))
    run_dir = run_adaptation(cfg, overwrite=args.overwrite, resume=args.resume)
    if run_dir is not None:
        from adapt3d.summary import print_summary

        print_summary(run_dir)
    return 0
