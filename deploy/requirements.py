"""Print Berth's dependencies from setup.cfg, plus those of the extras named on the command line.

The Dockerfile installs these before it copies the code, so that a change to the code reuses the
layer with the dependencies: `python deploy/requirements.py docker ecs > requirements.txt`.
"""
import configparser
import sys

config = configparser.ConfigParser()
config.read("setup.cfg")
extras = config["options.extras_require"]
print(config["options"]["install_requires"].strip())
for name in sys.argv[1:]:
    if name in extras:  # an extra this version does not have yet is skipped
        print(extras[name].strip())
