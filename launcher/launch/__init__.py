"""Starting a plan: the checked request (request.py), the torchrun commands and environment (commands.py), the
run directory (rundir.py) and the sbatch script (slurm.py). ``python -m launcher.launch`` needs no typer or pulp."""
