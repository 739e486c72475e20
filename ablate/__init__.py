"""Ablations and hyper-parameter searches over cli.py fits, run by Optuna: ``python -m ablate --help``."""
