"""The seeded vCenter simulator (govmomi vcsim) used as accelmon's test ground.

``build()`` compiles the Go program in this folder once (cached); ``Vcsim.start(...)`` runs it
seeded as a GPU estate and returns the URL, credentials, CA file and the ground-truth
manifest. See docs/vcsim.md.
"""

from accelmon.sim.vcsim._build import binary_path, build
from accelmon.sim.vcsim._process import DEFAULT_USER, Vcsim

__all__ = ["DEFAULT_USER", "Vcsim", "binary_path", "build"]
