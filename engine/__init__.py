"""conveyor.engine: the gRPC inference server (Open Inference Protocol v2)."""
