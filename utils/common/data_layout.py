"""Where things lie under the data roots: folder names every reader and writer shares.

- MegaDepth (D2Net's undistorted release): a scene_info file's ``image_paths`` read
  ``Undistorted_SfM/<scene>/images/<name>.jpg``, relative to ``MegaDepth_undistort``; the
  pair files store them without that first folder (``<scene>/images/<name>.jpg``).
- Validation (COLMAP reconstructions, docs/file-formats.md §3):
  ``<data_root>/immatch_benchmark/val_dense/<scene>/dense/{images,sparse}``.
"""

from pathlib import Path

#: The first folder of D2Net's scene_info ``image_paths`` (no trailing slash).
SFM_PREFIX = "Undistorted_SfM"
#: The validation scenes' folder, relative to the training data root.
VAL_SUBDIR = Path("immatch_benchmark") / "val_dense"
