"""conveyor.ingest: Arrow-based reading, validation, profiling and streaming into torch."""
