"""A training run on disk, written by `cameo train` and read by every other job.

    RUN/config.yaml  meta.json  metrics.jsonl  trackers.json
    RUN/tensorboard/cameo/  mlruns/  wandb/  samples/step-000100.png
    RUN/checkpoints/step-000100/   (`checkpoints` documents its files)

Modules: `layout` (every name above, finding checkpoints, creating the folder, meta.json),
`metrics` (metrics.jsonl: the one reader, the writer), `checkpoints` (written by the trainer,
read to resume and for inference) and `state` (optimizer and RNG state without pickle).
"""
