"""Novel-view sampling: the pipeline, camera files and target trajectories."""
