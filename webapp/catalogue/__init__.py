"""The catalogue on the main host: the tools a user may launch, and their live instances.

The YAML loader (loader.py) fills it from a file, for `berth catalogue load`.
"""
