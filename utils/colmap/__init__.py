"""COLMAP models through pycolmap (see :mod:`utils.colmap.read_model`)."""

from .read_model import (
    MODEL_FILES,
    Camera,
    Image,
    Point3D,
    build_reconstruction,
    camera_intrinsics,
    image_camera_center,
    image_pose,
    load_reconstruction,
    read_cameras,
    read_images,
    read_model,
    read_points3D,
    write_model,
)

__all__ = [
    "MODEL_FILES",
    "Camera",
    "Image",
    "Point3D",
    "build_reconstruction",
    "camera_intrinsics",
    "image_camera_center",
    "image_pose",
    "load_reconstruction",
    "read_cameras",
    "read_images",
    "read_model",
    "read_points3D",
    "write_model",
]
