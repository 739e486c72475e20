"""Nothing lost: atomic checkpoint files, saves on stop and on signals, resume paths, random state, and the
check that a checkpoint belongs to the configured network."""
