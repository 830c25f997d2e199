"""`cameo train`: the training loop and its objective; the run folder it writes is
`cameo_cli.run_folder`.

Modules: `objective` (noise, targets, loss), `model` (backbone + projection head), `data`
(resumable batch stream), `loop` (accelerate), `ema`, `metrics` (trackers), `validation`,
`progress`, `setup`, `plan`, `components`.
"""
