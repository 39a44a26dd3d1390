"""COLMAP models (cameras, images, points3D) through pycolmap, as plain Python structures.

The reader returns three dicts keyed by COLMAP ids, whose values are NamedTuples (so they
unpack like plain tuples and also have the attribute names of COLMAP's own
``read_write_model`` script):

- ``cameras[camera_id] = Camera(model, width, height, params)``: ``model`` is the model
  name (e.g. ``'PINHOLE'``), ``params`` a float64 array in COLMAP's order.
- ``images[image_id] = Image(name, camera_id, qvec, tvec, point3D_ids, xys)``: ``qvec``
  (4,) is the world-to-camera rotation as a quaternion (w, x, y, z), ``tvec`` (3,) the
  world-to-camera translation, ``xys`` (N, 2) the image's 2D points in pixels (COLMAP
  convention: the top-left image corner is (0, 0), pixel centres at +0.5) and
  ``point3D_ids`` (N,) int64 the 3D point of each 2D point, −1 where it has none.
- ``points3D[point3D_id] = Point3D(xyz, image_ids)``: ``xyz`` (3,), ``image_ids`` (M,)
  int64, one entry per observation (track element).

The writer builds a ``pycolmap.Reconstruction`` from the same structures and writes it as a
binary (default) or text model.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pycolmap

from utils.geometry import qvec2rotmat

__all__ = [
    "Camera",
    "Image",
    "Point3D",
    "read_model",
    "read_cameras",
    "read_images",
    "read_points3D",
    "camera_intrinsics",
    "pinhole_intrinsics",
    "image_pose",
    "image_camera_center",
    "write_model",
    "load_reconstruction",
    "build_reconstruction",
    "MODEL_FILES",
]

# Files a model folder must contain, by extension.
MODEL_FILES = ("cameras", "images", "points3D")

# COLMAP's invalid point3D id (uint64 max) as pycolmap reports it.
_INVALID_POINT3D_ID = int(getattr(pycolmap, "INVALID_POINT3D_ID", 2**64 - 1))


class Camera(NamedTuple):
    """One COLMAP camera: model name, image size (px) and its parameter vector (P,)."""

    model: str
    width: int
    height: int
    params: np.ndarray


class Image(NamedTuple):
    """One registered COLMAP image.

    name: file name relative to the image folder; camera_id: its camera;
    qvec: (4,) world-to-camera rotation quaternion (w, x, y, z); tvec: (3,) world-to-camera
    translation; point3D_ids: (N,) int64, −1 for untriangulated points; xys: (N, 2) pixels.
    """

    name: str
    camera_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    point3D_ids: np.ndarray
    xys: np.ndarray


class Point3D(NamedTuple):
    """One COLMAP 3D point: xyz (3,) in world coordinates, image_ids (M,) of its observations."""

    xyz: np.ndarray
    image_ids: np.ndarray


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _detect_ext(path: Path, ext: str | None) -> str:
    """Check that the model files exist in `path` and return their extension."""
    if not path.is_dir():
        raise FileNotFoundError(f"COLMAP model folder not found: {path}")
    candidates = [ext] if ext else [".bin", ".txt"]
    for e in candidates:
        if all((path / f"{name}{e}").is_file() for name in MODEL_FILES):
            return e
    e = candidates[0]
    missing = [f"{name}{e}" for name in MODEL_FILES if not (path / f"{name}{e}").is_file()]
    raise FileNotFoundError(
        f"COLMAP model in {path} is incomplete: missing {', '.join(missing)} "
        f"(expected {', '.join(n + e for n in MODEL_FILES)})"
    )


def load_reconstruction(path: str | Path, ext: str | None = None) -> pycolmap.Reconstruction:
    """Load a COLMAP model folder into a ``pycolmap.Reconstruction``.

    Args:
        path: folder holding cameras/images/points3D (``.bin`` or ``.txt``).
        ext: ``'.bin'`` or ``'.txt'``; None picks whichever complete set exists (binary first).
    Raises:
        FileNotFoundError naming the folder and the missing files.
    """
    path = Path(path)
    ext = _detect_ext(path, ext)
    rec = pycolmap.Reconstruction()
    try:
        if ext == ".bin":
            rec.read_binary(str(path))
        else:
            rec.read_text(str(path))
    except Exception as err:  # pycolmap raises ValueError/RuntimeError on bad files
        raise OSError(f"could not read the COLMAP model in {path}: {err}") from err
    return rec


def _cam_from_world(img: pycolmap.Image) -> pycolmap.Rigid3d:
    cfw = img.cam_from_world
    return cfw() if callable(cfw) else cfw


def _qvec_wxyz(rigid: pycolmap.Rigid3d) -> np.ndarray:
    """(4,) quaternion (w, x, y, z) of a Rigid3d's rotation (pycolmap stores x, y, z, w)."""
    x, y, z, w = np.asarray(rigid.rotation.quat, dtype=np.float64)
    return np.array([w, x, y, z], dtype=np.float64)


def _convert_cameras(rec: pycolmap.Reconstruction) -> dict[int, Camera]:
    return {
        int(cid): Camera(
            model=cam.model.name,
            width=int(cam.width),
            height=int(cam.height),
            params=np.asarray(cam.params, dtype=np.float64).copy(),
        )
        for cid, cam in sorted(rec.cameras.items())
    }


def _convert_images(rec: pycolmap.Reconstruction) -> dict[int, Image]:
    images: dict[int, Image] = {}
    for iid, img in sorted(rec.images.items()):
        pts = img.points2D
        n = len(pts)
        xys = np.zeros((n, 2), dtype=np.float64)
        p3d = np.full(n, -1, dtype=np.int64)
        for k, pt in enumerate(pts):
            xys[k] = pt.xy
            pid = int(pt.point3D_id)
            if pid != _INVALID_POINT3D_ID and pt.has_point3D():
                p3d[k] = pid
        if not img.has_pose:
            continue  # unregistered image: no pose to report
        rigid = _cam_from_world(img)
        images[int(iid)] = Image(
            name=str(img.name),
            camera_id=int(img.camera_id),
            qvec=_qvec_wxyz(rigid),
            tvec=np.asarray(rigid.translation, dtype=np.float64).copy(),
            point3D_ids=p3d,
            xys=xys,
        )
    return images


def _convert_points3D(rec: pycolmap.Reconstruction) -> dict[int, Point3D]:
    return {
        int(pid): Point3D(
            xyz=np.asarray(pt.xyz, dtype=np.float64).copy(),
            image_ids=np.array([int(e.image_id) for e in pt.track.elements], dtype=np.int64),
        )
        for pid, pt in sorted(rec.points3D.items())
    }


def read_model(
    path: str | Path, ext: str | None = None
) -> tuple[dict[int, Camera], dict[int, Image], dict[int, Point3D]]:
    """Read a COLMAP model folder.

    Args:
        path: folder with ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``).
        ext: force ``'.bin'`` or ``'.txt'``; None detects it (binary preferred).
    Returns:
        (cameras, images, points3D) as described in the module docstring. Images without a
        registered pose are left out.
    Raises:
        FileNotFoundError naming the folder and the missing files.
    """
    rec = load_reconstruction(path, ext)
    return _convert_cameras(rec), _convert_images(rec), _convert_points3D(rec)


def read_cameras(path: str | Path, ext: str | None = None) -> dict[int, Camera]:
    """Cameras of the model in folder `path` (see :func:`read_model`)."""
    return _convert_cameras(load_reconstruction(path, ext))


def read_images(path: str | Path, ext: str | None = None) -> dict[int, Image]:
    """Registered images of the model in folder `path` (see :func:`read_model`)."""
    return _convert_images(load_reconstruction(path, ext))


def read_points3D(path: str | Path, ext: str | None = None) -> dict[int, Point3D]:
    """3D points of the model in folder `path` (see :func:`read_model`)."""
    return _convert_points3D(load_reconstruction(path, ext))


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def camera_intrinsics(camera: Camera) -> np.ndarray:
    """(3, 3) calibration matrix K of a camera; distortion parameters are ignored.

    Supports SIMPLE_PINHOLE (f, cx, cy), PINHOLE (fx, fy, cx, cy), SIMPLE_RADIAL
    (f, cx, cy, k) and RADIAL (f, cx, cy, k1, k2).
    """
    model, params = camera.model, np.asarray(camera.params, dtype=np.float64)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = params[0]
        cx, cy = params[1], params[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = params[:4]
    else:
        raise ValueError(
            f"unsupported camera model {model!r} "
            "(supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL)"
        )
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def pinhole_intrinsics(camera: Camera) -> np.ndarray | None:
    """(3, 3) K of a camera that projects like a pinhole, else None.

    Pinhole cameras are PINHOLE, SIMPLE_PINHOLE and every perspective model whose distortion
    parameters are all zero (COLMAP's image_undistorter leaves such cameras as they are);
    cameras with lens distortion or a fisheye projection give None.
    """
    cam = pycolmap.Camera(
        model=camera.model,
        width=int(camera.width),
        height=int(camera.height),
        params=np.asarray(camera.params, dtype=np.float64),
    )
    if not (cam.is_undistorted() and cam.is_perspective_pinhole()):
        return None
    return np.asarray(cam.calibration_matrix(), dtype=np.float64)


def image_pose(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera pose of an image: R (3, 3) from its qvec and t (3,)."""
    return qvec2rotmat(image.qvec), np.asarray(image.tvec, dtype=np.float64)


def image_camera_center(image: Image) -> np.ndarray:
    """(3,) camera centre c = −Rᵀt of an image in world coordinates."""
    R, t = image_pose(image)
    return -R.T @ t


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def build_reconstruction(
    cameras: dict[int, Camera],
    images: dict[int, Image],
    points3D: dict[int, Point3D],
) -> pycolmap.Reconstruction:
    """Build a ``pycolmap.Reconstruction`` from the structures of :func:`read_model`.

    Observations (tracks) are taken from the images' ``point3D_ids``; ``Point3D.image_ids``
    is checked against them. Every image is registered with its pose.
    """
    rec = pycolmap.Reconstruction()
    for cid, cam in sorted(cameras.items()):
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(
                model=cam.model,
                width=int(cam.width),
                height=int(cam.height),
                params=np.asarray(cam.params, dtype=np.float64),
                camera_id=int(cid),
            )
        )
    tracks: dict[int, list[tuple[int, int]]] = {int(pid): [] for pid in points3D}
    for iid, im in sorted(images.items()):
        if im.camera_id not in cameras:
            raise ValueError(f"image {iid} ({im.name}) refers to unknown camera {im.camera_id}")
        xys = np.asarray(im.xys, dtype=np.float64).reshape(-1, 2)
        w, x, y, z = np.asarray(im.qvec, dtype=np.float64)
        pose = pycolmap.Rigid3d(
            pycolmap.Rotation3d(np.array([x, y, z, w])), np.asarray(im.tvec, dtype=np.float64)
        )
        rec.add_image_with_trivial_frame(
            pycolmap.Image(
                name=im.name, keypoints=xys, camera_id=int(im.camera_id), image_id=int(iid)
            ),
            pose,
        )
        for k, pid in enumerate(np.asarray(im.point3D_ids).reshape(-1)):
            if pid >= 0:
                if int(pid) not in tracks:
                    raise ValueError(f"image {iid} observes unknown 3D point {int(pid)}")
                tracks[int(pid)].append((int(iid), k))
    for pid, pt in sorted(points3D.items()):
        elems = tracks[int(pid)]
        expected = sorted(int(i) for i in np.asarray(pt.image_ids).reshape(-1))
        if sorted(i for i, _ in elems) != expected:
            raise ValueError(f"3D point {pid}: image_ids disagree with the images' observations")
        p3d = pycolmap.Point3D()
        p3d.xyz = np.asarray(pt.xyz, dtype=np.float64)
        track = pycolmap.Track()
        for iid, k in elems:
            track.add_element(iid, k)
        p3d.track = track
        rec.add_point3D_with_id(int(pid), p3d)
    return rec


def write_model(
    path: str | Path,
    cameras: dict[int, Camera],
    images: dict[int, Image],
    points3D: dict[int, Point3D],
    ext: str = ".bin",
) -> Path:
    """Write a COLMAP model (``ext`` '.bin' or '.txt') into folder `path` (created).

    pycolmap 4 also writes ``rigs`` and ``frames`` files beside the three classic ones;
    readers of the classic format ignore them. Returns the folder.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rec = build_reconstruction(cameras, images, points3D)
    if ext == ".bin":
        rec.write_binary(str(path))
    elif ext == ".txt":
        rec.write_text(str(path))
    else:
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
    return path
