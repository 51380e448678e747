"""conveyor.trainer: DDP training on ingested data, exporting to a model repository."""
