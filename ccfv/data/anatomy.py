"""The synthetic CT scene's drawing: smooth noise fields, a voxel grid in mm, ellipsoids, tubes, lesions, and
the abdominal and thoracic anatomy that :mod:`ccfv.data.synthetic` paints into a case (docs/demo-data.md)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------------------------
# Random fields and shapes
# ----------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm, spacing) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to zero mean and unit std, float32 ``shape``.

    Wide kernels are computed on a grid coarser by about sigma/2 and linearly interpolated up (same
    look, a fraction of the cost).
    """
    sigma_vox = np.broadcast_to(np.asarray(sigma_mm, dtype=float), (3,)) / np.asarray(spacing, dtype=float)
    factor = np.maximum(1, np.floor(sigma_vox / 2.0)).astype(int)
    coarse_shape = tuple(n if f == 1 else -(-n // f) + 1 for n, f in zip(shape, factor))
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma_vox / factor, mode="wrap")
    for axis, (n, f) in enumerate(zip(shape, factor)):
        if f > 1:
            field = _upsample_linear(field, axis, n, f)
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32, copy=False)


def _upsample_linear(field: np.ndarray, axis: int, n: int, factor: int) -> np.ndarray:
    """Linear interpolation of ``field`` along ``axis`` onto ``n`` points spaced ``1/factor`` apart."""
    position = np.arange(n, dtype=np.float32) / factor
    lower = np.floor(position).astype(int)
    weight = (position - lower).reshape([-1 if a == axis else 1 for a in range(field.ndim)])
    return np.take(field, lower, axis=axis) * (1 - weight) + np.take(field, lower + 1, axis=axis) * weight


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 6-connected binary dilation (same result as ``ndimage.binary_dilation``, faster)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 6-connected binary erosion; voxels on the array border are eroded."""
    padded = np.pad(mask, 1)
    return ~_dilate(~padded)[1:-1, 1:-1, 1:-1]


class Grid:
    """Voxel-centre coordinates in mm relative to the volume centre, as open (broadcastable) grids.

    ``x`` grows to the patient's left, ``y`` to posterior, ``z`` to superior (affine diag(-sx, -sy, sz)).
    """

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
        self.x = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.z = axes[2][None, None, :]

    def box(self, centre, half_extent) -> tuple[slice, slice, slice]:
        """Index slices of the voxels within ``centre +- half_extent`` mm (clipped to the volume)."""
        slices = []
        for c, h, n, s in zip(centre, half_extent, self.shape, self.spacing):
            lo = int(np.floor((c - h) / s + (n - 1) / 2.0))
            hi = int(np.ceil((c + h) / s + (n - 1) / 2.0)) + 1
            slices.append(slice(min(max(lo, 0), n), min(max(hi, 0), n)))
        return tuple(slices)

    def coords(self, index: tuple[int, int, int]) -> tuple[float, float, float]:
        return float(self.x[index[0], 0, 0]), float(self.y[0, index[1], 0]), float(self.z[0, 0, index[2]])


def _ellipsoid(grid: Grid, center, semi_axes, angle_deg: float = 0.0, deform=None, amplitude: float = 0.0):
    """Boolean mask of an ellipsoid rotated in-plane by ``angle_deg``, with its normalised radius
    perturbed by ``amplitude * deform`` (a smooth unit-std field gives a blobby, organ-like outline).

    Only the bounding box that the deformed ellipsoid can reach is evaluated.
    """
    cx, cy, cz = center
    a, b, c = semi_axes
    reach = 1.0 + (amplitude * max(0.0, -float(deform.min())) if deform is not None and amplitude else 0.0)
    half_extent = (reach * (max(a, b) if angle_deg else a), reach * (max(a, b) if angle_deg else b), reach * c)
    box = grid.box((cx, cy, cz), half_extent)
    mask = np.zeros(grid.shape, dtype=bool)
    if any(sl.stop <= sl.start for sl in box):
        return mask
    dx, dy, dz = grid.x[box[0]] - cx, grid.y[:, box[1]] - cy, grid.z[:, :, box[2]] - cz
    if angle_deg:
        t = np.deg2rad(angle_deg)
        dx, dy = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
    radius = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
    if deform is not None and amplitude:
        radius = radius + amplitude * deform[box]
    mask[box] = radius <= 1.0
    return mask


def _tube(grid: Grid, control_points, radii, z_centres, half_height, deform, amplitude):
    """Elongated organ along an in-plane quadratic Bezier curve (head -> tail).

    Radius and z-centre vary linearly along the curve; the cross-section is an ellipse with in-plane
    semi-axis ``radius(t)`` and z semi-axis ``half_height``.
    """
    p0, p1, p2 = (np.asarray(p, dtype=np.float32) for p in control_points)
    t = np.linspace(0.0, 1.0, 48, dtype=np.float32)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # [48, 2]
    xs, ys = grid.x[:, 0, 0], grid.y[0, :, 0]
    d2 = (xs[:, None, None] - curve[None, None, :, 0]) ** 2 + (ys[None, :, None] - curve[None, None, :, 1]) ** 2
    nearest = d2.argmin(axis=2)
    dist = np.sqrt(np.take_along_axis(d2, nearest[..., None], axis=2)[..., 0])
    tn = t[nearest, 0]
    radius = radii[0] + (radii[1] - radii[0]) * tn
    zc = z_centres[0] + (z_centres[1] - z_centres[0]) * tn
    rho = np.sqrt((dist / radius)[..., None] ** 2 + ((grid.z - zc[..., None]) / half_height) ** 2)
    return (rho + amplitude * deform) <= 1.0


def place_lesions(rng, grid: Grid, host: np.ndarray, count: int, radius_mm, deform, *, margin_mm: float):
    """Union of ``count`` blobby spheres centred inside ``host`` and clipped to it.

    Each centre is drawn among host voxels at least ``min(radius + margin_mm, 0.8 * deepest)`` mm from
    the host boundary (``deepest``: the largest such distance), so small hosts still get a lesion.
    """
    lesion = np.zeros(grid.shape, dtype=bool)
    if count <= 0 or not host.any():
        return lesion
    box = ndimage.find_objects(host.astype(np.uint8))[0]
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    depth = np.zeros(grid.shape, dtype=np.float64)
    depth[box] = ndimage.distance_transform_edt(np.pad(host[box], 1), sampling=grid.spacing)[1:-1, 1:-1, 1:-1]
    deepest = float(depth.max())
    for _ in range(count):
        radius = float(rng.uniform(*radius_mm))
        stretch = rng.uniform(0.85, 1.15, size=3)
        needed = min(radius + margin_mm, 0.8 * deepest)
        candidates = np.flatnonzero(depth >= needed)
        centre_index = np.unravel_index(candidates[rng.integers(candidates.size)], grid.shape)
        blob = _ellipsoid(grid, grid.coords(centre_index), radius * stretch, deform=deform, amplitude=0.15)
        blob[centre_index] = True
        lesion |= blob & host
    return lesion


class Painter:
    """Paints tissues into an HU canvas and keeps track of which voxels solid structures occupy, so
    that structures placed later never overlap earlier ones (they keep a one-voxel fat plane)."""

    def __init__(self, shape, texture: np.ndarray):
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.texture = texture
        self.occupied = np.zeros(shape, dtype=bool)

    def fill(self, mask: np.ndarray, mean_hu: float, texture_hu: float = 0.0, texture=None) -> None:
        tex = self.texture if texture is None else texture
        self.hu[mask] = mean_hu + texture_hu * tex[mask]

    def claim(self, mask: np.ndarray, within: np.ndarray, gap: bool = True) -> np.ndarray:
        """Restrict ``mask`` to ``within`` and away from occupied voxels; mark it occupied."""
        blocked = _dilate(self.occupied) if gap else self.occupied
        mask = mask & within & ~blocked
        self.occupied |= mask
        return mask


# ----------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------


def draw_shared_anatomy(rng, grid: Grid, painter: Painter, region: str, fields: dict) -> dict:
    """Body outline, subcutaneous fat, muscle wall, spine and aorta: present in every task."""
    fov = [n * s for n, s in zip(grid.shape, grid.spacing)]
    body_ax = (0.46 if region == "thorax" else 0.45) * fov[0] * rng.uniform(0.94, 1.04)
    body_ay = 0.43 * fov[1] * rng.uniform(0.94, 1.04)
    body_centre = (rng.uniform(-2, 2), rng.uniform(-2, 2))
    r_body = np.sqrt(((grid.x - body_centre[0]) / body_ax) ** 2 + ((grid.y - body_centre[1]) / body_ay) ** 2)
    r_body = np.broadcast_to(r_body, grid.shape) + 0.025 * fields["body"]
    fat_thickness = rng.uniform(0.08, 0.14) if region == "abdomen" else rng.uniform(0.06, 0.10)
    wall_thickness = rng.uniform(0.07, 0.10)
    body = r_body <= 1.0
    wall = body & (r_body > 1.0 - fat_thickness - wall_thickness) & (r_body <= 1.0 - fat_thickness)
    interior = r_body <= 1.0 - fat_thickness - wall_thickness
    fat_hu, muscle_hu = rng.uniform(-110, -90), rng.uniform(40, 55)
    painter.fill(body, fat_hu, 8.0)
    painter.fill(wall, muscle_hu, 6.0)

    # Inside the wall: abdomen = bowel/mesentery (soft tissue with fat and a little gas); thorax =
    # mediastinal fat and soft tissue. Organs painted later overwrite this background.
    if region == "abdomen":
        painter.fill(interior, rng.uniform(25, 40), 10.0)
        painter.fill(interior & (fields["bowel"] > 0.8), fat_hu + 10, 10.0)  # mesenteric fat
        gas = interior & (fields["bowel"] < -2.3) & (grid.y < 0)  # gas in anterior bowel loops
        painter.fill(gas, -900.0, 30.0)
    else:
        painter.fill(interior, rng.uniform(-60, -20), 20.0)

    # Spine: vertebral body (cortex + cancellous bone) with discs, spinal canal, posterior arch,
    # paraspinal muscles. Bone is drawn in the whole body, not only the interior.
    vb_r = 0.18 * body_ay * rng.uniform(0.9, 1.1)
    vb_c = (body_centre[0] + rng.uniform(-1, 1), body_centre[1] + 0.30 * body_ay)
    dist_vb = np.sqrt((grid.x - vb_c[0]) ** 2 + (grid.y - vb_c[1]) ** 2)
    period, disc = rng.uniform(24, 28), rng.uniform(5, 7)
    in_disc = np.broadcast_to(np.mod(grid.z + rng.uniform(0, period), period) < disc, grid.shape)
    vertebral_body = np.broadcast_to(dist_vb <= vb_r, grid.shape) & body
    cortex = vertebral_body & np.broadcast_to(dist_vb > vb_r - 2.5, grid.shape) & ~in_disc
    canal_r = 0.075 * body_ay
    canal_c = (vb_c[0], vb_c[1] + vb_r + canal_r + 0.5)
    dist_canal = np.sqrt((grid.x - canal_c[0]) ** 2 + (grid.y - canal_c[1]) ** 2)
    canal = np.broadcast_to(dist_canal <= canal_r, grid.shape) & body
    arch = np.broadcast_to((dist_canal > canal_r) & (dist_canal <= canal_r + 2.2), grid.shape)
    spinous = np.broadcast_to(
        (np.abs(grid.x - canal_c[0]) <= 1.6) & (grid.y > canal_c[1]) & (grid.y <= canal_c[1] + canal_r + 6.0),
        grid.shape,
    )
    arch = (arch | spinous) & body & ~in_disc & ~vertebral_body
    paraspinal = np.zeros(grid.shape, dtype=bool)
    for side in (-1, 1):
        paraspinal |= _ellipsoid(
            grid, (canal_c[0] + side * 0.2 * body_ax, canal_c[1] + 0.2 * body_ay, 0.0),
            (0.13 * body_ax, 0.17 * body_ay, 1e6),
        )
    paraspinal &= body & ~arch & ~canal & ~vertebral_body
    painter.fill(paraspinal, muscle_hu, 6.0)
    painter.fill(vertebral_body & ~in_disc, rng.uniform(300, 450), 25.0)
    painter.fill(vertebral_body & in_disc, rng.uniform(70, 90), 6.0)
    painter.fill(cortex, rng.uniform(750, 950), 40.0)
    painter.fill(arch, rng.uniform(550, 800), 40.0)
    painter.fill(canal, rng.uniform(5, 20), 4.0)
    spine = vertebral_body | arch | canal | paraspinal
    painter.occupied |= spine

    # Aorta (contrast-enhanced, left-anterior of the spine) and vena cava (right).
    aorta_r = 0.09 * body_ay * rng.uniform(0.9, 1.1)
    aorta_c = (vb_c[0] + 0.09 * body_ax, vb_c[1] - vb_r - aorta_r - 1.5)
    aorta = _ellipsoid(grid, (*aorta_c, 0.0), (aorta_r, aorta_r, 1e6))
    aorta = painter.claim(aorta, body, gap=False)
    painter.fill(aorta, rng.uniform(150, 220), 5.0)
    vessels = aorta
    if region == "abdomen":
        ivc = _ellipsoid(grid, (vb_c[0] - 0.22 * body_ax, vb_c[1] - vb_r - 2.0, 0.0), (4.5, 3.0, 1e6))
        ivc = painter.claim(ivc, interior)
        painter.fill(ivc, rng.uniform(100, 140), 5.0)
        vessels = vessels | ivc
    bone = (vertebral_body & ~in_disc) | arch
    return {
        "body": body, "subcutaneous_fat": body & (r_body > 1.0 - fat_thickness), "muscle_wall": wall,
        "interior": interior, "bone": bone, "cortex": cortex,
        "spine": spine, "vessels": vessels, "fat_hu": fat_hu, "muscle_hu": muscle_hu,
        "body_ax": body_ax, "body_ay": body_ay, "body_centre": body_centre, "r_body": r_body,
        "fat_thickness": fat_thickness, "wall_thickness": wall_thickness,
    }


def draw_abdomen(rng, grid: Grid, painter: Painter, shared: dict, fields: dict,
                  scale: dict[str, float] | None = None) -> dict:
    """Kidneys, pancreas, spleen, stomach and liver. Every abdominal task shows all of them; the task
    decides which one is labelled (and may draw it larger: ``scale``). Placed smallest/most central
    first, so larger organs yield."""
    scale = scale or {}
    ax, ay = shared["body_ax"], shared["body_ay"]
    bx, by = shared["body_centre"]
    hz = grid.shape[2] * grid.spacing[2] / 2.0
    interior = shared["interior"]
    deform, tex, fine = fields["organ_shape"], fields["texture"], fields["fine"]

    def j(scale: float) -> float:  # multiplicative per-case jitter
        return float(rng.uniform(1 - scale, 1 + scale))

    kidneys = np.zeros(grid.shape, dtype=bool)
    kidney_hu = rng.uniform(140, 175)
    for side in (-1, 1):
        centre = (bx + side * 0.45 * ax * j(0.05), by + 0.42 * ay * j(0.05), -0.3 * hz + rng.uniform(-4, 4))
        kidney = _ellipsoid(grid, centre, (0.14 * ax * j(0.1), 0.19 * ay * j(0.1), 0.42 * hz * j(0.1)),
                            angle_deg=side * rng.uniform(15, 30), deform=deform, amplitude=0.08)
        kidney = painter.claim(kidney, interior)
        sinus = kidney & _ellipsoid(grid, (centre[0] - side * 2.5, centre[1] - 1.0, centre[2]),
                                    (0.05 * ax, 0.07 * ay, 0.25 * hz))
        painter.fill(kidney, kidney_hu, 8.0, tex)
        painter.fill(sinus, rng.uniform(-20, 20), 10.0, tex)
        kidneys |= kidney

    pancreas_hu = rng.uniform(80, 105)
    head = (bx - 0.15 * ax + rng.uniform(-2, 2), by - 0.15 * ay + rng.uniform(-2, 2))
    bend = (bx + 0.15 * ax + rng.uniform(-2, 2), by - 0.38 * ay + rng.uniform(-2, 2))
    tail = (bx + 0.52 * ax + rng.uniform(-2, 2), by + 0.10 * ay + rng.uniform(-2, 2))
    z_head = rng.uniform(-0.1, 0.05) * hz
    ps = scale.get("pancreas", 1.0)
    pancreas = _tube(grid, (head, bend, tail), radii=(ps * rng.uniform(5.5, 7.5), ps * rng.uniform(3.8, 5.0)),
                     z_centres=(z_head, z_head + rng.uniform(3, 9)), half_height=ps * rng.uniform(7.5, 11.0),
                     deform=deform, amplitude=0.12)
    pancreas = painter.claim(pancreas, interior)
    painter.fill(pancreas, pancreas_hu, 14.0, fine)  # lobulated: higher-frequency texture

    spleen_hu = rng.uniform(100, 125)
    ss = scale.get("spleen", 1.0)
    spleen = _ellipsoid(grid, (bx + 0.62 * ax * j(0.05), by + 0.28 * ay * j(0.1), 0.2 * hz + rng.uniform(-4, 4)),
                        (ss * 0.24 * ax * j(0.12), ss * 0.4 * ay * j(0.12), ss * 0.34 * hz * j(0.12)),
                        angle_deg=rng.uniform(-40, -20), deform=deform, amplitude=0.12)
    spleen = painter.claim(spleen, interior)
    painter.fill(spleen, spleen_hu, 4.0, tex)

    stomach = _ellipsoid(grid, (bx + 0.3 * ax, by - 0.5 * ay, 0.45 * hz), (0.22 * ax * j(0.15), 0.2 * ay * j(0.15),
                         0.35 * hz), deform=deform, amplitude=0.1)
    stomach = painter.claim(stomach, interior)
    stomach_wall = stomach & ~_erode(stomach)
    painter.fill(stomach, rng.uniform(0, 20), 5.0, tex)  # fluid-filled lumen
    painter.fill(stomach_wall, rng.uniform(40, 60), 5.0, tex)  # enhancing wall

    liver_hu = rng.uniform(95, 120)
    right_lobe = _ellipsoid(grid, (bx - 0.5 * ax * j(0.05), by + rng.uniform(-2, 2), 0.15 * hz + rng.uniform(-4, 4)),
                            (0.42 * ax * j(0.1), 0.62 * ay * j(0.08), 0.65 * hz * j(0.1)),
                            deform=deform, amplitude=0.12)
    left_lobe = _ellipsoid(grid, (bx + 0.02 * ax, by - 0.45 * ay, 0.3 * hz + rng.uniform(-4, 4)),
                           (0.32 * ax * j(0.15), 0.22 * ay * j(0.15), 0.38 * hz * j(0.1)),
                           angle_deg=rng.uniform(-15, 15), deform=deform, amplitude=0.12)
    liver = painter.claim(right_lobe | left_lobe, interior)
    painter.fill(liver, liver_hu, 6.0, tex)

    return {
        "kidneys": kidneys, "pancreas": pancreas, "spleen": spleen, "stomach": stomach, "liver": liver,
        "organ_hu": {"kidneys": kidney_hu, "pancreas": pancreas_hu, "spleen": spleen_hu, "liver": liver_hu},
    }


def draw_thorax(rng, grid: Grid, painter: Painter, shared: dict, fields: dict) -> dict:
    """Ribs, heart, the dome of the liver and both lungs with vessels."""
    ax, ay = shared["body_ax"], shared["body_ay"]
    bx, by = shared["body_centre"]
    hz = grid.shape[2] * grid.spacing[2] / 2.0
    interior, r_body = shared["interior"], shared["r_body"]
    deform, tex = fields["organ_shape"], fields["texture"]

    # Ribs: oblique bony bands just inside the muscle wall, not at the anterior midline (sternum gap).
    inner = 1.0 - shared["fat_thickness"] - shared["wall_thickness"]
    theta = np.arctan2(grid.y - by, grid.x - bx)
    period = rng.uniform(18, 22)
    band = np.mod(grid.z + 8.0 * np.sin(theta) + rng.uniform(0, period), period) < 0.25 * period
    ribs = (r_body > inner - 0.05) & (r_body <= inner + 0.01) & band
    ribs &= ~np.broadcast_to((np.abs(grid.x - bx) < 0.15 * ax) & (grid.y < by), grid.shape)
    ribs &= ~shared["spine"]
    painter.fill(ribs, rng.uniform(500, 800), 40.0)
    painter.occupied |= ribs

    heart = _ellipsoid(grid, (bx + 0.12 * ax, by - 0.28 * ay, -0.35 * hz + rng.uniform(-3, 3)),
                       (0.36 * ax * rng.uniform(0.9, 1.1), 0.4 * ay * rng.uniform(0.9, 1.1), 0.5 * hz),
                       deform=deform, amplitude=0.08)
    heart = painter.claim(heart, interior)
    pool = _erode(_erode(heart))
    painter.fill(heart, rng.uniform(40, 55), 6.0, tex)
    painter.fill(pool, rng.uniform(120, 170), 5.0, tex)

    liver_dome = _ellipsoid(grid, (bx - 0.45 * ax, by, -1.15 * hz), (0.45 * ax, 0.65 * ay, 0.55 * hz),
                            deform=deform, amplitude=0.1)
    liver_dome = painter.claim(liver_dome, interior)
    painter.fill(liver_dome, rng.uniform(95, 120), 6.0, tex)

    lung_hu = rng.uniform(-870, -830)
    lungs = np.zeros(grid.shape, dtype=bool)
    for side in (-1, 1):
        lung = _ellipsoid(grid, (bx + side * 0.47 * ax, by + 0.02 * ay, 0.2 * hz + rng.uniform(-3, 3)),
                          (0.38 * ax * rng.uniform(0.92, 1.05), 0.64 * ay * rng.uniform(0.92, 1.05), 1.0 * hz),
                          deform=deform, amplitude=0.06)
        lungs |= painter.claim(lung, interior)
    painter.fill(lungs, lung_hu, 15.0, fields["fine"])
    lung_vessels = lungs & (fields["lung_vessels"] > 1.9)
    # Thin vessels at this resolution are partial-volume averaged with the air around them: far darker
    # than a solid nodule, which keeps nodules learnable within the demo's budget.
    painter.fill(lung_vessels, rng.uniform(-450, -250), 30.0, tex)
    return {"ribs": ribs, "heart": heart, "liver_dome": liver_dome, "lungs": lungs,
            "lung_vessels": lung_vessels, "organ_hu": {"lungs": lung_hu}}
