"""`cameo compare`: held-out metrics of runs against steps, grouped into methods."""
