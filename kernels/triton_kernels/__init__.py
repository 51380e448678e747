"""Triton kernels of the fused ops, one module per op.

Imported lazily by the op modules (``conveyor.kernels.linear`` and friends)
only when the dispatcher picks ``triton``, so ``conveyor.kernels`` imports
without Triton installed. On CPU they run only under ``TRITON_INTERPRET=1``,
which must be set before these modules are imported (the tests' conftest does).
"""
