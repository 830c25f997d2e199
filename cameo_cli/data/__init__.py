"""Datasets: readers (re10k, dtu, synthetic), shards on disk, and multi-view sampling."""
