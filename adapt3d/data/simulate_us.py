"""SIMULATED 3D ultrasound rendered from a real MRI/CT on its own grid (a stand-in, NOT real US).

A pyramidal fan from a probe on one face; speckle; boundary echoes and acoustic shadows from a
pseudo-impedance of the input; depth attenuation with time-gain compensation; anisotropic blur;
log compression. Rendering happens on a polar grid around the probe (depth r, azimuth theta,
elevation phi; in mm, so anisotropic voxels are respected) and is mapped back onto the input
grid: labels stay aligned voxel for voxel. Output is float32, [1, 255] inside the fan and 0
outside it (0 = not imaged, as in real swept 3D US); label voxels outside the fan are set to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from adapt3d.data import nnunet
from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError, InputError


_AXES = {"i": 0, "j": 1, "k": 2}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM = _FWHM * sigma for a Gaussian
_EDGE_SMOOTHING_SAMPLES = 1.0  # radial smoothing before edge detection (noise is not an edge)
_MAX_LATERAL_SAMPLES = 192
_MAX_DEPTH_SAMPLES = 512
_ECHO_BINS, _ECHO_CLIP = 128, 4.0  # contrast-limited equalisation of the echogenicity
_MEDIAN_GREY = 0.4  # automatic gain: grey level (fraction of 255) of the median tissue echo
_POSITIVE = ("depth_mm", "frequency_mhz", "speckle_corr_mm", "axial_resolution_mm", "lateral_resolution_mm", "scatter", "dynamic_range_db")
_NON_NEGATIVE = ("attenuation_db_cm_mhz", "impedance_contrast")
_FRACTIONS = ("tgc", "speckle", "gel_threshold")


@dataclass(frozen=True)
class UltrasoundParams:
    """Settings of the simulated probe and image formation (lengths in mm, angles in degrees).

    probe_axis: where the probe sits. ``"+i"``, ``"-j"``, ... give the beam direction along a voxel
    axis (``"-j"``: probe on the high-j face, beam toward low j; anterior for RAS volumes); a
    letter ``R L A P S I`` names the anatomical side of the volume the probe sits on (found from
    the affine's direction: the voxel axis nearest to that side); ``"auto"`` is resolved from the
    source dataset's anatomy by :func:`adapt3d.data.simulate_us_probe.resolve_probe` (anterior
    when nothing is known).
    probe_position: probe location as fractions of the volume extent per voxel axis (0 and 1 are
    the outer faces; values outside [0, 1] place it outside the volume); None: the face centre.
    """

    probe_axis: str = "A"
    probe_position: tuple[float, float, float] | None = None
    angles_deg: tuple[float, float] = (70.0, 70.0)  # full opening, azimuth x elevation
    depth_mm: float | None = None  # None: from the probe to the opposite face
    frequency_mhz: float = 3.5
    attenuation_db_cm_mhz: float = 0.5
    tgc: float = 0.7  # fraction of the round-trip attenuation compensated by time-gain control
    speckle: float = 1.0  # 0: no speckle, 1: fully developed (Rayleigh amplitude) speckle
    speckle_corr_mm: float = 1.5
    axial_resolution_mm: float = 0.5  # PSF full width at half maximum along the beam
    lateral_resolution_mm: float = 1.0  # PSF FWHM across the beam, at half the depth
    impedance_contrast: float = 8.0  # impedance = exp(contrast * normalised intensity)
    percentiles: tuple[float, float] = (1.0, 99.0)  # robust normalisation of the input to [0, 1]
    scatter: float = 0.02  # diffuse backscatter relative to a perfect reflector
    shadowing: bool = True
    gel_threshold: float = 0.08  # normalised intensity below which the ray is still in coupling gel
    dynamic_range_db: float = 50.0

    def __post_init__(self) -> None:
        axis = self.probe_axis.strip()
        if not ((len(axis) == 2 and axis[0] in "+-" and axis[1] in _AXES) or axis.upper() in _OPPOSITE or axis == "auto"):
            raise ConfigError(f"simulate-us probe_axis: {self.probe_axis!r} is not one of +i -i +j -j +k -k R L A P S I auto")
        if len(self.angles_deg) != 2 or not all(0.0 < a < 180.0 for a in self.angles_deg):
            raise ConfigError(f"simulate-us angles_deg: {self.angles_deg} must be two opening angles in (0, 180)")
        if self.probe_position is not None and len(self.probe_position) != 3:
            raise ConfigError(f"simulate-us probe_position: {self.probe_position} must be 3 fractions (i, j, k)")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"simulate-us percentiles: {self.percentiles} must satisfy 0 <= low < high <= 100")
        checks = [(k, "> 0", lambda v: v > 0) for k in _POSITIVE] + [(k, ">= 0", lambda v: v >= 0) for k in _NON_NEGATIVE]
        for key, rule, ok in checks + [(k, "in [0, 1]", lambda v: 0 <= v <= 1) for k in _FRACTIONS]:
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise ConfigError(f"simulate-us {key}: {value} must be {rule}")


@dataclass(frozen=True)
class _Fan:
    """Probe geometry: apex (voxel coordinates), beam frame in voxel units, polar sampling."""

    apex: np.ndarray  # (3,) voxel coordinates of the probe
    frame: np.ndarray  # (3, 3) voxel displacement per mm along x (azimuth), y (elevation), z (beam)
    depth: float
    half_angles: tuple[float, float]  # radians
    shape: tuple[int, int, int]  # polar samples (r, theta, phi)

    @property
    def steps(self) -> tuple[float, float, float]:
        nr, nt, nphi = self.shape
        return self.depth / (nr - 1), 2 * self.half_angles[0] / (nt - 1), 2 * self.half_angles[1] / (nphi - 1)


def _beam_axis(probe_axis: str, affine: np.ndarray) -> tuple[int, int]:
    """Voxel axis the beam runs along and its sign (+1: toward increasing index)."""
    axis = probe_axis.strip()
    if axis == "auto":  # no dataset information here: an anterior probe
        axis = "A"
    if axis[0] in "+-":
        return _AXES[axis[1]], 1 if axis[0] == "+" else -1
    side = axis.upper()
    for index, code in enumerate(nib.orientations.aff2axcodes(affine)):
        if code == side:
            return index, -1
        if code == _OPPOSITE[side]:
            return index, 1
    raise ConfigError(f"simulate-us probe_axis: side {side!r} not found in the volume orientation")


def _fan_geometry(image: Volume, params: UltrasoundParams) -> _Fan:
    shape = np.array(image.shape)
    spacing = np.array(image.spacing)
    axis, sign = _beam_axis(params.probe_axis, image.affine)
    if params.probe_position is None:
        apex = (shape - 1) / 2.0
        apex[axis] = -0.5 if sign > 0 else shape[axis] - 0.5
    else:
        apex = -0.5 + np.asarray(params.probe_position, dtype=float) * shape
    lateral = [a for a in range(3) if a != axis]
    linear = image.affine[:3, :3]
    z = sign * linear[:, axis] / spacing[axis]
    x = linear[:, lateral[0]] - (linear[:, lateral[0]] @ z) * z
    x /= np.linalg.norm(x)
    world = np.stack([x, np.cross(z, x), z])  # beam frame: azimuth, elevation, beam (RAS unit vectors)
    depth = params.depth_mm
    if depth is None:
        far = shape[axis] - 0.5 if sign > 0 else -0.5
        depth = abs(far - apex[axis]) * spacing[axis]
    if depth <= 0:
        raise ConfigError(f"simulate-us probe_position: probe at or beyond the far face ({params.probe_position})")
    half = tuple(math.radians(a) / 2.0 for a in params.angles_deg)
    step = max(float(spacing.min()), depth / (_MAX_DEPTH_SAMPLES - 1))
    n_lat = [
        int(np.clip(math.ceil(2 * depth * math.sin(h) / spacing[a]) + 1, 16, _MAX_LATERAL_SAMPLES))
        for h, a in zip(half, lateral)
    ]
    polar_shape = (math.ceil(depth / step) + 1, n_lat[0], n_lat[1])
    frame = (np.linalg.inv(linear) @ world.T).T
    return _Fan(apex, frame, float(depth), half, polar_shape)  # type: ignore[arg-type]


def _polar_to_voxel(fan: _Fan) -> np.ndarray:
    """Voxel coordinates (3, nr, nt, nphi) of every polar sample."""
    nr, nt, nphi = fan.shape
    r = np.linspace(0.0, fan.depth, nr, dtype=np.float32)[:, None, None]
    theta = np.linspace(-fan.half_angles[0], fan.half_angles[0], nt, dtype=np.float32)[None, :, None]
    phi = np.linspace(-fan.half_angles[1], fan.half_angles[1], nphi, dtype=np.float32)[None, None, :]
    xyz = (r * np.sin(theta) * np.cos(phi), r * np.sin(phi) * np.ones_like(theta), r * np.cos(theta) * np.cos(phi))
    return np.stack(
        [fan.apex[d] + sum(float(fan.frame[c, d]) * xyz[c] for c in range(3)) for d in range(3)]
    ).astype(np.float32)


def _voxel_to_polar(fan: _Fan, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fractional polar indices (3, *shape) of every voxel and the boolean field-of-view mask."""
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - fan.apex[:, None].astype(np.float32)
    mm = (np.linalg.inv(fan.frame.T).astype(np.float32) @ grid).reshape(3, *shape)  # beam frame, mm
    x, y, z = mm
    r = np.sqrt(x * x + y * y + z * z)
    theta = np.arctan2(x, z)
    phi = np.arcsin(np.clip(y / np.maximum(r, 1e-6), -1.0, 1.0))
    eps = 1e-6
    inside = (r <= fan.depth + eps) & (np.abs(theta) <= fan.half_angles[0] + eps) & (np.abs(phi) <= fan.half_angles[1] + eps)
    dr, dt, dphi = fan.steps
    coords = np.stack([r / dr, (theta + fan.half_angles[0]) / dt, (phi + fan.half_angles[1]) / dphi])
    return coords, inside


def fan_mask(image: Volume, params: UltrasoundParams | None = None) -> np.ndarray:
    """Boolean mask of the voxels of ``image`` inside the simulated probe's field of view."""
    params = params or UltrasoundParams()
    return _voxel_to_polar(_fan_geometry(image, params), image.shape)[1]


def normalise_robust(array: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map ``array`` linearly so the given percentiles become 0 and 1, clipped to [0, 1]."""
    lo, hi = np.percentile(array, percentiles)
    if hi <= lo:
        return np.zeros(array.shape, np.float32)
    return np.clip((array.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _speckle(shape: tuple[int, ...], sigma: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-mean speckle intensity: |Gaussian-filtered complex white noise|^2 (exponential)."""
    re = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    im = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    power = re * re + im * im
    return power / power.mean()


def _echogenicity(norm: np.ndarray, threshold: float) -> np.ndarray:
    """Diffuse-scatter strength in [0, 1]: contrast-limited histogram equalisation of the body voxels.

    Capping each histogram bin at ``_ECHO_CLIP`` times the mean count keeps a narrow (noise-only)
    histogram from being stretched over the whole range.
    """
    hist, edges = np.histogram(norm[norm > threshold], bins=_ECHO_BINS, range=(0.0, 1.0))
    if not hist.any():
        return np.zeros_like(norm)
    clipped = np.minimum(hist, _ECHO_CLIP * hist.sum() / _ECHO_BINS)
    clipped += (hist.sum() - clipped.sum()) / _ECHO_BINS
    cdf = np.concatenate([[0.0], np.cumsum(clipped)]) / clipped.sum()
    return np.interp(norm, edges, cdf).astype(np.float32)


def _reflections(tissue: np.ndarray, contrast: float) -> np.ndarray:
    """Intensity reflection coefficient at the edges met along each ray (axis 0 of ``tissue``).

    Edges are local maxima of the smoothed radial derivative; the step height there is
    ``|d/dr| * sqrt(2 pi) * sigma`` and the impedance ratio ``exp(contrast * step)``. Steps below
    twice the median step (mostly noise) are discounted.
    """
    sigma = _EDGE_SMOOTHING_SAMPLES
    grad = ndimage.gaussian_filter(tissue, (sigma, 1.0, 1.0), order=(1, 0, 0), mode="nearest")
    mag = np.abs(grad)
    peak = np.zeros(mag.shape, bool)
    peak[1:-1] = (mag[1:-1] >= mag[:-2]) & (mag[1:-1] > mag[2:])
    step = mag * math.sqrt(2.0 * math.pi) * sigma
    noise = 2.0 * float(np.median(step[peak])) if peak.any() else 0.0
    step = np.where(peak, np.maximum(step - noise, 0.0), 0.0)
    return np.tanh(contrast * step / 2.0) ** 2


def _render_polar(norm: np.ndarray, echogenic: np.ndarray, fan: _Fan, params: UltrasoundParams, rng: np.random.Generator) -> np.ndarray:
    """Log-compressed echo image in [0, 255] on the polar grid (r, theta, phi)."""
    dr, dt, dphi = fan.steps
    ref_r = fan.depth / 2.0
    coords = _polar_to_voxel(fan)
    tissue = ndimage.map_coordinates(norm, coords, order=1, mode="nearest").astype(np.float32)
    echogenic = ndimage.map_coordinates(echogenic, coords, order=1, mode="nearest")
    del coords
    body = ndimage.gaussian_filter(tissue, 1.0) > params.gel_threshold
    entered = np.maximum.accumulate(body, axis=0)
    # coupling gel up to the first tissue sample along each ray: same impedance, no scatter
    first = np.take_along_axis(tissue, body.argmax(axis=0)[None], axis=0)
    tissue = np.where(entered, tissue, first)
    reflect = _reflections(tissue, params.impedance_contrast)
    transmit = np.ones_like(reflect)
    if params.shadowing:  # energy left after the interfaces in front of each sample
        transmit[1:] = np.cumprod(1.0 - reflect[:-1], axis=0)
    r_cm = np.linspace(0.0, fan.depth / 10.0, fan.shape[0], dtype=np.float32)[:, None, None]
    loss_db = (1.0 - params.tgc) * params.attenuation_db_cm_mhz * params.frequency_mhz * 2.0 * r_cm
    gain = transmit * 10.0 ** (-loss_db / 10.0)

    def sigmas(axial_fwhm: float, lateral_fwhm: float) -> tuple[float, float, float]:  # in polar samples
        return axial_fwhm / _FWHM / dr, lateral_fwhm / _FWHM / (ref_r * dt), lateral_fwhm / _FWHM / (ref_r * dphi)

    psf = sigmas(params.axial_resolution_mm, params.lateral_resolution_mm)
    specular = ndimage.gaussian_filter(gain * reflect, psf, mode="nearest")
    diffuse = ndimage.gaussian_filter(gain * entered * (0.02 + 0.98 * echogenic**2), psf, mode="nearest")
    noise = _speckle(fan.shape, sigmas(params.speckle_corr_mm, params.speckle_corr_mm), rng)
    speckle = (1.0 - params.speckle) + params.speckle * noise
    echo = specular + params.scatter * diffuse * speckle
    ref = max(float(np.median(echo[entered])) if entered.any() else 1.0, 1e-30)
    db = 10.0 * np.log10(np.maximum(echo, ref * 1e-12) / ref)
    return np.clip(255.0 * (_MEDIAN_GREY + db / params.dynamic_range_db), 0.0, 255.0).astype(np.float32)


def check_label_grid(image: Volume, label: Volume) -> None:
    diffs = nnunet.affine_differences(label.affine, image.affine) if label.shape == image.shape else [f"shape {label.shape} vs {image.shape}"]
    if diffs:
        raise InputError(f"{label.path or 'label'}: grid differs from image {image.path or ''}: {'; '.join(diffs)}")


def simulate_ultrasound(
    image: Volume,
    label: Volume | None = None,
    *,
    seed: int = 0,
    params: UltrasoundParams | None = None,
) -> tuple[Volume, Volume | None]:
    """Render a SIMULATED ultrasound volume from ``image`` on the same grid (shape and affine).

    Returns the float32 image (0 outside the fan, [1, 255] inside) and, when given, the label with
    voxels outside the fan set to 0. Same inputs and seed give bit-identical arrays.
    """
    params = params or UltrasoundParams()
    if label is not None:
        check_label_grid(image, label)
    fan = _fan_geometry(image, params)
    norm = normalise_robust(image.array, params.percentiles)
    echogenic = _echogenicity(ndimage.gaussian_filter(norm, min(image.spacing) / np.array(image.spacing)), params.gel_threshold)
    polar = _render_polar(norm, echogenic, fan, params, np.random.default_rng(seed))
    coords, inside = _voxel_to_polar(fan, image.shape)
    out = ndimage.map_coordinates(polar, coords, order=1, mode="nearest").astype(np.float32)
    out = np.where(inside, np.maximum(out, 1.0), 0.0).astype(np.float32)
    us = Volume(array=out, affine=image.affine.copy(), header=image.header)
    if label is None:
        return us, None
    cut = np.where(inside, label.array, 0).astype(label.array.dtype)
    return us, Volume(array=cut, affine=label.affine.copy(), header=label.header)


def label_cut_fractions(original: np.ndarray, masked: np.ndarray) -> dict[int, float]:
    """Per class id (> 0) of ``original``: the fraction of its voxels removed in ``masked``."""
    ids, before = np.unique(original[original > 0], return_counts=True)
    after = {int(i): int(np.count_nonzero(masked == i)) for i in ids}
    return {int(i): round(1.0 - after[int(i)] / int(n), 6) for i, n in zip(ids, before)}
