"""How the agent reacts to each NVML error code (the same for the real and the simulated NVML)."""

from __future__ import annotations

import pynvml

# the call (or field) does not exist here: cached, never retried every poll
UNSUPPORTED = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
# the GPU (or the whole driver) is gone: report the GPU down, re-initialise with backoff
DOWN = frozenset(
    {
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_RESET_REQUIRED,
    }
)
# re-initialising NVML itself (nvmlInit) is worth a try for these
REINIT_LIBRARY = frozenset(
    {
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_UNINITIALIZED,
    }
)
NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION


def code_of(e: BaseException) -> int:
    return int(getattr(e, "value", pynvml.NVML_ERROR_UNKNOWN))


def name_of(code: int) -> str:
    """``NVML_ERROR_GPU_IS_LOST`` style name of an error code (``NVML_SUCCESS`` for 0)."""
    if code == 0:
        return "NVML_SUCCESS"
    for k, v in vars(pynvml).items():
        if k.startswith("NVML_ERROR_") and v == code:
            return k
    return f"NVML error {code}"
