"""``adapt3d ingest``: validate an nnU-Net v2 raw dataset and write its dataset card."""

from __future__ import annotations

import argparse

NAME = "ingest"
HELP = "validate an nnU-Net v2 raw dataset and write its dataset card (YAML)"
DESCRIPTION = """\
Validate an nnU-Net v2 raw dataset (dataset.json, imagesTr/<case>_0000.nii.gz,
labelsTr/<case>.nii.gz, optional imagesTs/ and labelsTs/) and write a dataset card.
Files may be .nii.gz, .nii, .mha, .mhd, .nrrd or .nhdr: one format per dataset, the
file_ending of dataset.json (files in another format are reported once per folder).

Every problem is reported at once, one line per file: missing or invalid dataset.json,
unpaired files, shape or affine mismatches between image and label, undeclared label ids,
empty labels, NaN/Inf voxels, non-3D or corrupt files. Nothing is written on failure.
Images without a label (in imagesTr, or imagesTs without labelsTs) are kept as unlabelled
cases: the pool for self-supervised adaptation; one warning line names the imagesTr ones.

The card records modality, classes with voxel counts (total, per case, cases containing
them), per-case shape/spacing/orientation, a spacing summary, the licence, SHA-256 hashes
of every file, and two fields to fill in by hand: silver_standard (true when labels are
model predictions) and caveats. Those are kept when the card is regenerated.

example:
  adapt3d ingest data/Dataset004_BrainTumourMR --licence "BSD-3-Clause (pyradiomics)"
  # writes datasets/Dataset004_BrainTumourMR.yaml
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DIR", help="nnU-Net v2 raw dataset folder (holds dataset.json)")
    p.add_argument("--out", metavar="YAML", help="card path or folder (default: datasets/<DatasetName>.yaml)")
    p.add_argument(
        "--licence", "--license", dest="licence", metavar="TEXT",
        help='licence of the data (default: dataset.json "licence"/"license"/"reference", else unknown)',
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from adapt3d.data.card import card_summary, ingest
    from adapt3d.data.nnunet import read_dataset, unlabelled_training_warning

    path, card = ingest(args.dataset, out=args.out, licence=args.licence)
    warning = unlabelled_training_warning(read_dataset(args.dataset))
    if warning:
        print(warning, file=sys.stderr)
    print(card_summary(card))
    print(f"wrote {path}")
    return 0
