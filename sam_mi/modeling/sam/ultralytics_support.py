"""Importing `ultralytics` (MobileSAM and FastSAM, paper Table 9's fast variants) as a model library only.

Before the import SAM-MI sets YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=0 unless the user set them: ultralytics
by default probes the network, downloads assets and pip-installs modules at run time, none of which SAM-MI
wants. Checkpoints are checked before ultralytics is imported.
"""
import os


def _require_ultralytics():
    """Import ultralytics offline (see module docstring) or say which pip package provides it."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    try:
        import ultralytics
    except ImportError as e:
        raise ImportError(
            "SAM variants 'mobile_sam' and 'fast_sam' need the 'ultralytics' package: "
            "pip install --no-deps ultralytics==8.4.190 ultralytics-thop==2.2.3"
        ) from e
    return ultralytics
