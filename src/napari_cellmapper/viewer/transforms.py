"""SpatialData coordinate transformations as napari ``affine`` matrices (2D, y/x order), and the
viewer's camera."""

from __future__ import annotations

from typing import Any

import numpy as np


def coordinate_systems(element: Any) -> list[str]:
    """Names of the coordinate systems an element is registered in."""
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True).keys())


def affine_yx(element: Any, coordinate_system: str) -> np.ndarray:
    """3x3 homogeneous matrix mapping the element's (y, x) to ``coordinate_system``'s (y, x)."""
    from spatialdata.transformations import get_transformation

    transformation = get_transformation(element, to_coordinate_system=coordinate_system)
    matrix = transformation.to_affine_matrix(input_axes=("y", "x"), output_axes=("y", "x"))
    return np.asarray(matrix, dtype=float)


#: napari centres pixel ``i`` at ``i``; SpatialData (and the cells' coordinates) at ``i + 0.5``.
HALF_PIXEL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


def raster_affine_yx(element_affine: np.ndarray) -> np.ndarray:
    """napari ``affine`` for a raster (image, labels): the element's transformation after the
    half-pixel shift, so pixel ``i`` covers ``[i, i + 1]`` as in SpatialData."""
    return np.asarray(element_affine, dtype=float) @ HALF_PIXEL


def apply_affine_yx(matrix: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """Apply a 3x3 (y, x) homogeneous matrix to an (n, 2) array of (y, x) positions."""
    yx = np.asarray(yx, dtype=float)
    return yx @ matrix[:2, :2].T + matrix[:2, 2]


def mean_scale(matrix: np.ndarray) -> float:
    """Isotropic scale factor of an affine matrix (square root of the area scale)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:2, :2]))))


def viewer_camera(viewer: Any) -> Any:
    """``viewer.scene.camera`` (napari >= 0.9), else ``viewer.camera`` (napari < 0.9), or None."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None) if scene is not None else None
    return camera if camera is not None else getattr(viewer, "camera", None)


def camera_zoom(viewer: Any) -> float:
    """Screen pixels per world unit (1 without a camera)."""
    camera = viewer_camera(viewer)
    return float(camera.zoom) if camera is not None else 1.0
