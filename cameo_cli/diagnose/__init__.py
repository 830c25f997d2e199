"""`cameo diagnose`: attention-correspondence precision per layer, over rotation bins and
training, the identity-attention perturbation test, and the recommended layer (stored
through `cameo_cli.layers`)."""

from cameo_cli.diagnose.job import DiagnoseRequest, run_diagnose
from cameo_cli.match_precision import Radii

__all__ = [
    "DiagnoseRequest",
    "Radii",
    "run_diagnose",
]
