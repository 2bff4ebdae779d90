"""What every packed weight format shares: size accounting, a readable repr, and the checks that
`from_tensors` runs on tensors coming back from a graph or a saved artifact.

Each concrete format is a frozen dataclass (fields `spec`, `in_features`, then its named tensors)
that also inherits `PackedWeight`; its `TENSOR_FIELDS` gives the fixed order of `tensors()`, which
is exactly the `Tensor[] weight` argument that `lowc::qlinear` receives.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from lowc.errors import QuantizationError
from lowc.quant.spec import FormatSpec, as_spec


class PackedWeight:
    """Mixin for packed weight dataclasses."""

    FAMILY: ClassVar[str]
    TENSOR_FIELDS: ClassVar[tuple[str, ...]]
    spec: FormatSpec
    in_features: int

    def tensors(self) -> list[torch.Tensor]:
        """The packed tensors in the documented order (the `weight` list of lowc::qlinear)."""
        return [getattr(self, name) for name in self.TENSOR_FIELDS]

    @property
    def out_features(self) -> int:
        return self.tensors()[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of all packed tensors (weights, scales, zeros)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_weight(self) -> float:
        """Storage cost per original weight, scales and padding included."""
        return 8.0 * self.nbytes / max(1, self.out_features * self.in_features)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
            for name, t in zip(self.TENSOR_FIELDS, self.tensors())
        )
        return (
            f"{type(self).__name__}({self.spec.name!r}, out={self.out_features}, in={self.in_features}, "
            f"{fields}, {self.nbytes} bytes, {self.bits_per_weight:.2f} bits/weight)"
        )

    @classmethod
    def _check_spec(cls, fmt) -> FormatSpec:
        spec = as_spec(fmt)
        if spec.family != cls.FAMILY:
            raise QuantizationError(f"{cls.__name__} holds {cls.FAMILY} formats, not {spec.name!r}")
        return spec

    @classmethod
    def _check_tensors(
        cls, spec: FormatSpec, tensors: Sequence[torch.Tensor], expected: Sequence[tuple[torch.dtype, tuple]]
    ) -> None:
        """Check count, dtype and shape of tensors against (dtype, shape) pairs, naming any mismatch."""
        if len(tensors) != len(expected):
            raise QuantizationError(
                f"{spec.name}: expected {len(expected)} weight tensors {list(cls.TENSOR_FIELDS)}, got {len(tensors)}"
            )
        for name, t, (dtype, shape) in zip(cls.TENSOR_FIELDS, tensors, expected):
            if not isinstance(t, torch.Tensor):
                raise QuantizationError(f"{spec.name}: weight tensor {name!r} is a {type(t).__name__}, not a Tensor")
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise QuantizationError(
                    f"{spec.name}: weight tensor {name!r} is {t.dtype}{list(t.shape)}, expected "
                    f"{dtype}{list(shape)}; was it packed for another format or in_features?"
                )


def finish_linear(
    y: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype, lead_shape: Sequence[int], spec: FormatSpec
) -> torch.Tensor:
    """Shared tail of every reference linear: float32 y [M, N] (+ bias) -> out_dtype [..., N]."""
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != y.shape[-1] or not bias.is_floating_point():
            raise QuantizationError(
                f"{spec.name}: bias must be a float vector of {y.shape[-1]} elements, "
                f"got {bias.dtype}{list(bias.shape)}"
            )
        y = y + bias.to(torch.float32)
    return y.to(out_dtype).reshape(*lead_shape, y.shape[-1])


def check_in_features(spec: FormatSpec, x: torch.Tensor, in_features: int) -> None:
    """The activation's last dim must be the layer's (unpadded) in_features."""
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise QuantizationError(
            f"{spec.name}: input has shape {tuple(x.shape)} but the weight was packed for in_features={in_features}"
        )
