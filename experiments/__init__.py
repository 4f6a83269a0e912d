"""Experiments: scenario files and the controller that runs them over SSH (see README.md)."""
