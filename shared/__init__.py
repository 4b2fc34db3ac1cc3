"""What the producer and the worker both import: cell spec, models, optimizations, measurement."""
