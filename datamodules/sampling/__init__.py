"""Sample order: per-epoch shuffles, whole shards per rank, and skipping what an interrupted epoch already trained."""
