"""Geometry: point maps (depth + cameras, optional VGGT) and correspondence targets."""

from cameo_cli.geometry.correspondence import CorrespondenceTargets, correspondence_targets
from cameo_cli.geometry.pointmaps import point_map_from_depth, resize_point_map

__all__ = [
    "CorrespondenceTargets",
    "correspondence_targets",
    "point_map_from_depth",
    "resize_point_map",
]
