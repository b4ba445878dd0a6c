"""Package layout: accelmon/ is the core; collector/ and analytics/ are installed as
accelmon.collector and accelmon.analytics (see [tool.setuptools] package-dir in pyproject.toml)."""

from setuptools import find_packages, setup

ROOTS = {"accelmon": "accelmon", "accelmon.collector": "collector", "accelmon.analytics": "analytics"}
packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
