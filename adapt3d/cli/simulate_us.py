"""``adapt3d simulate-us``: render SIMULATED 3D ultrasound from a real MRI/CT (nnU-Net raw output)."""

from __future__ import annotations

import argparse

NAME = "simulate-us"
HELP = "render SIMULATED 3D ultrasound (not real US) from an MRI/CT volume or a whole nnU-Net dataset"
DESCRIPTION = """\
Render a SIMULATED ultrasound-like volume from a real MRI or CT, on the input's own grid, as a
stand-in target domain: no openly licensed 3D ultrasound with masks is available. The output is
NOT real ultrasound; every dataset written carries SIMULATED.md (source file, licence, seed,
parameters) and a dataset.json whose description starts with "SIMULATED ultrasound".

Model: a probe on one side of the body (--probe: anterior by default, or auto from the source
dataset's anatomy; docs/simulated_us.md) with a pyramidal fan (--angle), speckle (--speckle),
boundary echoes and acoustic shadows behind strong reflectors (from a pseudo-impedance of the
input intensities), depth attenuation partly compensated by time-gain control, anisotropic blur,
log compression. Intensities are in [1, 255] inside the fan and 0 outside it. Labels keep the
input grid; label voxels outside the fan are set to 0 and the fraction cut per class is reported.

Output (nnU-Net v2 raw layout, in the source's format): DIR/dataset.json, DIR/imagesTr/<case>_0000.nii.gz,
DIR/labelsTr/<case>.nii.gz (when a label is given), DIR/SIMULATED.md. DIR must not exist unless
--overwrite. Same input, seed and options give identical files.

examples:
  adapt3d simulate-us sct_t1w_0000.nii.gz --label sct_t1w.nii.gz --out simUS --seed 1
  adapt3d simulate-us --dataset data/Dataset003_SpinalCordMR --out data/Dataset103_SimUS
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", metavar="IN.nii.gz", help="source MRI/CT volume (.nii.gz, .nii, .mha, .mhd, .nrrd or .nhdr); output in its format")
    p.add_argument("--label", metavar="L.nii.gz", help="label map on the same grid as IN")
    p.add_argument("--dataset", metavar="SRC_DIR", help="convert every case of this nnU-Net raw dataset instead of IN")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="with --dataset: only these case ids")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--seed", type=int, default=0, help="random seed (with --dataset, case n uses seed + n; default 0)")
    g = p.add_argument_group("simulated probe")
    g.add_argument(
        "--probe", metavar="SIDE",
        help="side of the body the probe sits on: anterior (default), posterior, left, right, superior, inferior, "
        "or auto: from the source dataset.json's anatomy (classes, then name/description: spine -> posterior, "
        "brain -> superior, else anterior); found in the volume from its affine (docs/simulated_us.md)",
    )
    g.add_argument(
        "--probe-axis", metavar="AXIS",
        help="instead of --probe: beam direction along a voxel axis (+i -i +j -j +k -k; -j = probe on the "
        "high-j face) or a side letter (R L A P S I)",
    )
    g.add_argument(
        "--probe-position", nargs=3, type=float, metavar=("FI", "FJ", "FK"),
        help="probe position as fractions of the volume extent along i, j, k (0/1 = outer faces; "
        "outside [0, 1] = outside the volume); default: centre of the probe face",
    )
    g.add_argument("--depth-mm", type=float, help="imaging depth in mm (default: to the opposite face)")
    g.add_argument("--angle", nargs="+", type=float, metavar="DEG", help="fan opening angle(s) in degrees: one for both directions, or azimuth elevation (default 70)")
    g.add_argument("--speckle", type=float, help="speckle strength, 0 (none) to 1 (fully developed; default)")
    g.add_argument("--speckle-mm", type=float, help="speckle correlation length in mm (default 1.5)")
    g.add_argument("--frequency", type=float, metavar="MHZ", help="centre frequency in MHz (default 3.5)")
    g.add_argument("--attenuation", type=float, metavar="DB_CM_MHZ", help="attenuation in dB/cm/MHz (default 0.5)")
    g.add_argument("--tgc", type=float, help="fraction of the attenuation compensated by time-gain control, 0-1 (default 0.7)")
    g.add_argument("--dynamic-range", type=float, metavar="DB", help="log-compression dynamic range in dB (default 50)")
    g.add_argument("--no-shadows", action="store_true", help="do not darken regions behind strong reflectors")


def run(args: argparse.Namespace) -> int:
    from adapt3d.data.simulate_us import UltrasoundParams
    from adapt3d.data.simulate_us_files import simulate_us_dataset, simulate_us_files
    from adapt3d.data.simulate_us_probe import probe_axis_for
    from adapt3d.errors import ConfigError

    if (args.image is None) == (args.dataset is None):
        raise ConfigError("simulate-us: give either IN.nii.gz or --dataset SRC_DIR (exactly one)")
    if args.dataset is not None and args.label is not None:
        raise ConfigError("simulate-us: --label goes with IN.nii.gz, not --dataset (labels come from labelsTr/)")
    if args.cases and args.dataset is None:
        raise ConfigError("simulate-us: --cases goes with --dataset")
    if args.probe is not None and args.probe_axis is not None:
        raise ConfigError("simulate-us: give --probe or --probe-axis, not both")
    if args.angle and len(args.angle) > 2:
        raise ConfigError(f"simulate-us --angle: give 1 or 2 angles, not {len(args.angle)}")
    given = {
        "probe_axis": args.probe_axis or (probe_axis_for(args.probe) if args.probe is not None else None),
        "probe_position": tuple(args.probe_position) if args.probe_position else None,
        "angles_deg": (args.angle[0], args.angle[-1]) if args.angle else None,
        "depth_mm": args.depth_mm,
        "frequency_mhz": args.frequency,
        "attenuation_db_cm_mhz": args.attenuation,
        "tgc": args.tgc,
        "speckle": args.speckle,
        "speckle_corr_mm": args.speckle_mm,
        "dynamic_range_db": args.dynamic_range,
        "shadowing": False if args.no_shadows else None,
    }
    params = UltrasoundParams(**{key: value for key, value in given.items() if value is not None})
    if args.dataset is not None:
        result = simulate_us_dataset(args.dataset, args.out, args.seed, params, args.cases, overwrite=args.overwrite)
    else:
        result = simulate_us_files(args.image, args.label, args.out, seed=args.seed, params=params, overwrite=args.overwrite)
    for case in result["cases"]:
        cut = case["label_cut"]
        lost = ", ".join(f"{name} {100 * f:.1f}%" for name, f in cut.items() if f > 0) if cut else ""
        print(f"{case['case']}: SIMULATED ultrasound (seed {case['seed']})" + (f"; label cut outside the fan: {lost}" if lost else ""))
    print(f"probe: {result['probe']}")
    print(f"wrote {result['out_dir']} (SIMULATED ultrasound, see SIMULATED.md)")
    return 0
