"""The cell engine: one cell, start to end, in this process (torch). `run.run_cell` is the entry."""
