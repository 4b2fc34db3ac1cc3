"""What the producer, the collector and the worker all import, without torch: the cell spec, the catalogue of
models and optimizations, the task contract, the result schema, the Redis keys and manifest, settings."""
