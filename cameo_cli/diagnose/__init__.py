"""`cameo diagnose`: attention-correspondence precision per layer, over rotation bins and
training, the identity-attention perturbation test, and the recommended layer."""

from cameo_cli.diagnose.job import DiagnoseRequest, run_diagnose
from cameo_cli.diagnose.precision import Radii
from cameo_cli.diagnose.recommend import read_recommended_layer, write_recommended_layer

__all__ = [
    "DiagnoseRequest",
    "Radii",
    "read_recommended_layer",
    "run_diagnose",
    "write_recommended_layer",
]
