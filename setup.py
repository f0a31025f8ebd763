"""Package list only; everything else is in pyproject.toml.

setuptools' package discovery finds folders under diffaug/; the bundled configs stay at the top of the
repository (configs/) and ship inside the package as diffaug.configs, a mapping discovery cannot express.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["diffaug*"]), "diffaug.configs"])
