"""Dataset tools built on the prompt logs (a command, not an addon): `python -m datasets export`."""
