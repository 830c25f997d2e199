"""`cameo train`: the training loop, its objective, checkpoints and run folders.

Modules: `objective` (noise, targets, loss), `model` (backbone + projection head), `data`
(resumable batch stream), `loop` (accelerate), `checkpoint` (safetensors + JSON, atomic),
`ema`, `rng`, `state_io`, `rundir`, `metrics`, `validation`, `progress`, `setup`.
"""
