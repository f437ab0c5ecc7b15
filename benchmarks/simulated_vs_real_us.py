"""Simulated vs real 3D ultrasound: grey-level histograms and speckle statistics.

Writes docs/simulated_vs_real_us.png and benchmarks/results/simulated_vs_real_us.json and prints a table.

Real: the PLUS spine phantom (datasets/sample/Dataset005_SpinePhantomUS; freehand reconstruction of
tracked B-mode frames, 0.5 mm). Simulated (``adapt3d simulate-us``, on the source's own grid):
the embedded abdominal MRI as the demo renders it (anterior probe, 90 deg fan, 3 mm voxels) and the
spinal-cord T2w MRI with ``--probe auto`` (posterior, 1 mm voxels).

Speckle statistics, per patch: 4 mm cubes (at least 3 voxels a side) wholly inside the field of view (no 0 voxel) holding tissue
(median grey level in [20, 235]: coupling gel and saturated bone left out).
- grey SNR: mean / sd of the grey levels (no assumption);
- envelope SNR: grey levels g decompressed with the simulator's log law, envelope A = 10^(g * 50 / (20 * 255))
  (50 dB over the grey range; the real scanner's law is unknown, so for the phantom this is an assumption),
  then mean / sd of A; fully developed speckle (Rayleigh envelope) gives sqrt(pi / (4 - pi)) = 1.91;
- Nakagami m of A, E[A^2]^2 / Var(A^2): 1 for Rayleigh, > 1 smoother (post-Rayleigh), < 1 spikier;
- Kolmogorov-Smirnov distance between the pooled A / mean(A) of the patches and the unit-mean Rayleigh law.

Usage: python benchmarks/simulated_vs_real_us.py   (about 10 s on one CPU core)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapt3d.data.imageio import Volume, load_volume  # noqa: E402
from adapt3d.data.simulate_us import UltrasoundParams, simulate_ultrasound  # noqa: E402
from adapt3d.data.simulate_us_probe import resolve_probe  # noqa: E402

SAMPLE = ROOT / "datasets" / "sample"
PATCH_MM = 4.0
DYNAMIC_RANGE_DB = 50.0
RAYLEIGH_SNR = math.sqrt(math.pi / (4.0 - math.pi))


def volumes() -> dict[str, tuple[Volume, int]]:
    """Name -> (volume, RAS axis to slice for the figure: a plane containing the beam)."""
    real = load_volume(SAMPLE / "Dataset005_SpinePhantomUS" / "imagesTs" / "spine_us_0000.nii.gz")
    abdomen = load_volume(SAMPLE / "Dataset002_TotalSegExampleMR" / "imagesTr" / "ts_mr_sm_0000.nii.gz")
    cord_root = SAMPLE / "Dataset003_SpinalCordMR"
    cord = load_volume(cord_root / "imagesTr" / "sct_t2w_0000.nii.gz")
    cord_params, _ = resolve_probe(UltrasoundParams(probe_axis="auto"), json.loads((cord_root / "dataset.json").read_text()))
    return {
        "real: PLUS spine phantom": (real, 1),  # its probe swept over the high-S face (phantom frame)
        "simulated: abdominal MRI, anterior": (simulate_ultrasound(abdomen, seed=0, params=UltrasoundParams(angles_deg=(90.0, 90.0)))[0], 2),
        "simulated: spinal-cord MRI, auto (posterior)": (simulate_ultrasound(cord, seed=0, params=cord_params)[0], 2),
    }


def patches(volume: Volume) -> list[np.ndarray]:
    """Grey levels of the tissue patches (PATCH_MM cubes inside the field of view), flattened."""
    size = [max(3, round(PATCH_MM / s)) for s in volume.spacing]
    a = volume.array
    out = []
    for i in range(0, a.shape[0] - size[0] + 1, size[0]):
        for j in range(0, a.shape[1] - size[1] + 1, size[1]):
            for k in range(0, a.shape[2] - size[2] + 1, size[2]):
                p = a[i : i + size[0], j : j + size[1], k : k + size[2]].ravel()
                if p.min() > 0 and 20.0 <= np.median(p) <= 235.0:
                    out.append(p.astype(np.float64))
    return out


def envelope(grey: np.ndarray) -> np.ndarray:
    return 10.0 ** (grey * DYNAMIC_RANGE_DB / (20.0 * 255.0))


def rayleigh_cdf(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.exp(-math.pi * x * x / 4.0)  # unit-mean Rayleigh


def statistics(volume: Volume) -> dict:
    inside = volume.array[volume.array > 0]
    ps = patches(volume)
    env = [envelope(p) for p in ps]
    pooled = np.sort(np.concatenate([e / e.mean() for e in env]))
    ks = float(np.max(np.abs(np.arange(1, pooled.size + 1) / pooled.size - rayleigh_cdf(pooled))))
    nakagami = [float(np.mean(e**2) ** 2 / np.var(e**2)) for e in env]
    return {
        "voxel_mm": [round(s, 3) for s in volume.spacing],
        "fov_fraction": round(float(inside.size / volume.array.size), 3),
        "grey_percentiles_5_25_50_75_95": [round(float(v), 1) for v in np.percentile(inside, [5, 25, 50, 75, 95])],
        "tissue_patches": len(ps),
        "grey_snr_median": round(float(np.median([p.mean() / p.std() for p in ps])), 2),
        "envelope_snr_median": round(float(np.median([e.mean() / e.std() for e in env])), 2),
        "envelope_snr_iqr": [round(float(v), 2) for v in np.percentile([e.mean() / e.std() for e in env], [25, 75])],
        "nakagami_m_median": round(float(np.median(nakagami)), 2),
        "ks_to_rayleigh": round(ks, 3),
        "_inside": inside, "_env_snr": [e.mean() / e.std() for e in env], "_pooled": pooled,
    }


def figure(vols: dict[str, tuple[Volume, int]], stats: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 8.6), layout="constrained")
    colours = ("black", "tab:red", "tab:blue")
    for ax, (name, (vol, axis)), colour in zip(axes[0], vols.items(), colours):
        ornt = nib.orientations.io_orientation(vol.affine)  # display in RAS: no voxel-order surprises
        ras = nib.orientations.apply_orientation(vol.array, ornt)
        spacing = [vol.spacing[int(np.flatnonzero(ornt[:, 0] == a)[0])] for a in range(3)]
        cut = [slice(None)] * 3
        cut[axis] = ras.shape[axis] // 2
        h, v = [a for a in range(3) if a != axis]
        ax.imshow(ras[tuple(cut)].T, cmap="gray", origin="lower", vmin=0, vmax=255,
                  aspect=spacing[v] / spacing[h], interpolation="nearest")
        ax.set_title(f"{name}\n{('sagittal', 'coronal', 'axial')[axis]} slice, {'RAS'[v]} up, {'RAS'[h]} right, "
                     f"{spacing[h]:g} x {spacing[v]:g} mm voxels", fontsize=9, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
    bins = np.linspace(0, 255, 52)
    for (name, s), colour in zip(stats.items(), colours):
        axes[1][0].hist(s["_inside"], bins=bins, density=True, histtype="step", color=colour, lw=1.5, label=name)
        axes[1][1].hist(s["_env_snr"], bins=np.linspace(0, 4, 41), density=True, histtype="step", color=colour, lw=1.5,
                        label=f"median {s['envelope_snr_median']:.2f} ({s['tissue_patches']} patches)")
        axes[1][2].hist(s["_pooled"], bins=np.linspace(0, 4, 61), density=True, histtype="step", color=colour, lw=1.5,
                        label=f"KS {s['ks_to_rayleigh']:.3f}, Nakagami m {s['nakagami_m_median']:.2f}")
    x = np.linspace(0, 4, 200)
    axes[1][2].plot(x, math.pi * x / 2 * np.exp(-math.pi * x * x / 4), "k--", lw=1, label="Rayleigh (fully developed speckle)")
    axes[1][1].axvline(RAYLEIGH_SNR, color="k", ls="--", lw=1, label=f"Rayleigh {RAYLEIGH_SNR:.2f}")
    axes[1][0].set(title="grey levels inside the field of view", xlabel="grey level", ylabel="density")
    axes[1][1].set(title=f"envelope SNR per {PATCH_MM:g} mm tissue patch", xlabel="mean / sd of the envelope")
    axes[1][2].set(title="envelope / patch mean, pooled", xlabel="normalised envelope")
    for ax in axes[1]:
        ax.legend(fontsize=7)
    fig.suptitle("Simulated (adapt3d simulate-us) vs real (PLUS spine phantom) 3D ultrasound; envelope = grey levels "
                 f"decompressed with a {DYNAMIC_RANGE_DB:g} dB log law", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> int:
    vols = volumes()
    stats = {name: statistics(vol) for name, (vol, _) in vols.items()}
    figure(vols, stats, ROOT / "docs" / "simulated_vs_real_us.png")
    public = {name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in stats.items()}
    results = ROOT / "benchmarks" / "results" / "simulated_vs_real_us.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(public, indent=1) + "\n")
    print(f"{'volume':46s} {'voxel mm':>14s} {'patches':>7s} {'grey SNR':>8s} {'env SNR':>7s} {'IQR':>11s} {'m':>5s} {'KS':>6s}  grey p5/25/50/75/95")
    for name, s in public.items():
        print(f"{name:46s} {'x'.join(f'{v:g}' for v in s['voxel_mm']):>14s} {s['tissue_patches']:7d} {s['grey_snr_median']:8.2f} "
              f"{s['envelope_snr_median']:7.2f} {s['envelope_snr_iqr'][0]:5.2f}-{s['envelope_snr_iqr'][1]:<5.2f} {s['nakagami_m_median']:5.2f} "
              f"{s['ks_to_rayleigh']:6.3f}  {'/'.join(f'{v:g}' for v in s['grey_percentiles_5_25_50_75_95'])}")
    print(f"Rayleigh (fully developed speckle): envelope SNR {RAYLEIGH_SNR:.2f}, Nakagami m 1")
    print("wrote docs/simulated_vs_real_us.png, benchmarks/results/simulated_vs_real_us.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
