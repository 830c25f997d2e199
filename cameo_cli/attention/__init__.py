"""Multi-view 3D self-attention: processors, the layer probe and identity perturbation."""
