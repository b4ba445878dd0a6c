"""accelmon: GPU utilization and NUMA-placement analytics for VMware vSphere estates."""

__version__ = "0.1.0"
