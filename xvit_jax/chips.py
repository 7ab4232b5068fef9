"""What an accelerator chip can do: peak dense bfloat16 FLOP/s and memory (HBM), per device kind.

The numbers are the vendors' published specifications (per chip; TPU v4 and v5p count a chip, not a
TensorCore; NVIDIA's are the dense, not sparse, tensor-core figures of the SXM parts). MFU divides by
`peak_flops`; the plan tool compares a chip's needs with `hbm_bytes`.
"""

import dataclasses

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str            # as a user says it: "v5e", "H100"
  device_kinds: tuple  # jax's `device.device_kind` strings of this chip
  peak_flops: float    # dense bfloat16 FLOP/s per chip
  hbm_bytes: int       # per chip
  source: str


CHIPS = (
    Chip("v4", ("TPU v4",), 275e12, 32 * GIB, "https://cloud.google.com/tpu/docs/v4"),
    Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GIB, "https://cloud.google.com/tpu/docs/v5e"),
    Chip("v5p", ("TPU v5", "TPU v5p"), 459e12, 95 * GIB, "https://cloud.google.com/tpu/docs/v5p"),
    Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GIB, "https://cloud.google.com/tpu/docs/v6e"),
    Chip("A100-40GB", ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"), 312e12, 40 * 10 ** 9,
         "https://www.nvidia.com/en-us/data-center/a100/"),
    Chip("A100-80GB", ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"), 312e12, 80 * 10 ** 9,
         "https://www.nvidia.com/en-us/data-center/a100/"),
    Chip("H100", ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), 989e12, 80 * 10 ** 9,
         "https://www.nvidia.com/en-us/data-center/h100/"),
    Chip("H200", ("NVIDIA H200",), 989e12, 141 * 10 ** 9, "https://www.nvidia.com/en-us/data-center/h200/"),
)


def by_name(name):
  """The Chip called `name` ("v5e", "H100", ...), or None."""
  return next((c for c in CHIPS if c.name == name), None)


def by_device_kind(kind):
  """The Chip whose jax device_kind is `kind`, or None (CPU, or a kind not in the table)."""
  return next((c for c in CHIPS if kind in c.device_kinds), None)


def peak_flops(devices, override=None):
  """Peak bfloat16 FLOP/s of one of `devices`: `override` if set (> 0), else the table's; None if unknown."""
  if override:
    return float(override)
  chip = by_device_kind(devices[0].device_kind)
  return chip.peak_flops if chip else None
