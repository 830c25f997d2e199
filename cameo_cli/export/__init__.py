"""`cameo export`: a self-contained, copyable model folder from a run or checkpoint."""
