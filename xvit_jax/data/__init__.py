"""Input: video sources (synthetic.py, later TFDS builders), transforms and grain pipelines."""
