"""Sharing a personal tool: its owner grants users or groups access to its address."""
