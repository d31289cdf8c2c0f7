"""`python -m gateway.history`: this replica's feeder process (feeder.py), started by the gateway."""

from .feeder import run

run()
