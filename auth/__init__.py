"""Credentials, token lifecycle and account pools. Knows nothing about flows."""
