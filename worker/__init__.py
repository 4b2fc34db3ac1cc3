"""The worker side: the single-cell runner (`python -m worker.cell`) needs no Celery."""
