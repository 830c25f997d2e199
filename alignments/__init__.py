"""cameo's built-in alignment methods, registered through the `cameo.alignments` entry points.

This module stays light (no torch): each spec names its method class by string and, for
methods with options (the recipe's `alignment.options`), the dataclass of those options.
CAMEO's own parameters are the `alignment` section's keys (layer, weight, epsilon, loss,
head, targets, chunk_size).
"""

from dataclasses import dataclass

from cameo_cli.registry import AlignmentSpec


@dataclass
class TeacherOptions:
    """Options of a feature-alignment baseline: an MLP on a block's hidden state regresses
    a frozen teacher's patch features of each view."""

    teacher: str | None = None  # local teacher weights (a folder; a file for VGGT)
    block: str | None = None  # module path in the backbone; None: the block of alignment.layer
    teacher_resolution: int | None = None  # teacher input px; None: patch size x student grid
    projector_dim: int = 2048  # the MLP's hidden width (REPA's projector_dim)
    resample: str = "none"  # "none": the grids must match; "bilinear": upsample the projection
    student_dim: int | None = None  # channels of the block's output (resolved at planning)
    teacher_dim: int | None = None  # channels of the teacher's features (resolved)
    teacher_patch: int | None = None  # the teacher's patch size in px (resolved)


@dataclass
class GeometryForcingOptions(TeacherOptions):
    """Geometry Forcing's options: REPA's, plus the VGGT layer and the scale head."""

    teacher_layer: int = -1  # the aggregator layer whose patch tokens are the target; -1: last
    scale_dim: int = 2048  # hidden width of the scale head (normalised projection -> raw VGGT)


NONE = AlignmentSpec(
    name="none",
    description="no alignment term: L = L_denoise (the baseline)",
    method=None,
)
CAMEO = AlignmentSpec(
    name="cameo",
    description="CAMEO: the supervised layers' cross-view attention to 3D correspondence",
    method="cameo.alignments.cameo:CameoAlignment",
    needs=("probe", "geometry"),
)
REPA = AlignmentSpec(
    name="repa",
    description="REPA: a block's hidden state to DINOv2 patch tokens of each view (-cos)",
    method="cameo.alignments.repa:Repa",
    needs=("hidden_state", "teacher"),
    parameters=TeacherOptions,
)
GEOMETRY_FORCING = AlignmentSpec(
    name="geometry-forcing",
    description="Geometry Forcing: a block's hidden state to VGGT features of all views "
    "(-cos + scale regression)",
    method="cameo.alignments.geometry_forcing:GeometryForcing",
    needs=("hidden_state", "teacher"),
    parameters=GeometryForcingOptions,
)
