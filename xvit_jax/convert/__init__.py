"""Weight conversion between xvit_jax and other codebases (pure functions: arrays in, arrays out)."""
