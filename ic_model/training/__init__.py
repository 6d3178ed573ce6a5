"""Training: curated shards → batches (``data``), the stage loop (``loop.train_stage``),
resumable checkpoints (``checkpoint``) and the run folder every stage builds on (``run``)."""
