"""Executors of a sweep's tasks (``sweep.executor.type``); this branch carries the SLURM one, :mod:`.slurm`."""
