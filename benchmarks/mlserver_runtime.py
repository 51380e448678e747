"""A minimal MLServer runtime serving a TorchScript file, for benchmarks/serve_bench.py.

Runs inside MLServer's own venv (it is not imported by conveyor). The input is
the first request tensor as float32; the output is ``probability``.
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TorchScriptRuntime(MLModel):
    async def load(self) -> bool:
        self._model = torch.jit.load(self.settings.parameters.uri)
        self._model.eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        with torch.inference_mode():
            y = self._model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name="probability", payload=y)],
        )
