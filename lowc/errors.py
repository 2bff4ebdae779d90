"""Exceptions raised by lowc.

Every error a user can trigger is a `LowcError` whose message names the problem and how to fix it,
so a failure never surfaces only as a traceback from deep inside torch.export or Triton.
"""


class LowcError(Exception):
    """Base class of every error lowc raises on purpose."""


class SchemeError(LowcError, ValueError):
    """An unknown or malformed scheme name, or a scheme the model cannot take."""


class CaptureError(LowcError):
    """The model could not be captured as an FX graph."""


class InputError(LowcError, ValueError):
    """Inputs of the wrong dtype, rank or size were passed to a compiled model."""


class PassError(LowcError):
    """A graph pass failed, broke a graph invariant, or changed the numerics in debug mode."""


class QuantizationError(LowcError, ValueError):
    """A tensor cannot be quantized in the requested format (shape, group size, NaN/Inf)."""


class CalibrationError(LowcError):
    """Calibration data is missing, too short, or produced non-finite statistics."""


class KernelError(LowcError):
    """A kernel could not be generated, compiled or launched for a spec."""


class CacheError(LowcError):
    """The kernel or KV cache was misused (full, too small, wrong slot)."""


class NotImplementedYet(LowcError, NotImplementedError):
    """A documented feature that this version of lowc does not provide yet."""
