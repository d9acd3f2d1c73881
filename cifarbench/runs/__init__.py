"""`cifarbench classify`: the local pipeline, its options, output writers, lock and resume."""
