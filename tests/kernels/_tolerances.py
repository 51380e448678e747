"""Tolerances by dtype, shared by the kernel tests (rtol, atol).

float32: about 1e-5 relative (inputs scaled so outputs are O(1); summation
order differs from torch's, so a few ulps per accumulated term). float64: for
the C++ path's own comparisons. bfloat16/float16 (GPU paths): one or two
units in the last place of the storage format, inputs rounded the same way.
"""

import torch

TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """``torch.testing.assert_close`` with the dtype's tolerances (atol times ``scale``)."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol * scale)
