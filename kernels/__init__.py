"""conveyor.kernels: fused ops, each with a reference implementation and a dispatcher."""

from conveyor.kernels.histogram import (
    histogram_slots,
    histogram_update,
    histogram_update_reference,
)

__all__ = ["histogram_slots", "histogram_update", "histogram_update_reference"]
