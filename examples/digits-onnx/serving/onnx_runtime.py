"""An MLServer inference runtime that runs an ONNX model with ONNX Runtime.

MLServer (https://github.com/SeldonIO/MLServer) serves it over the V2 inference protocol;
this class is MLServer's documented extension point for a model format it does not ship.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._inputs = self._session.get_inputs()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for spec, request_input in zip(self._inputs, payload.inputs, strict=True):
            array = NumpyCodec.decode_input(request_input)
            feeds[spec.name] = array.astype(np.float32) if "float" in spec.type else array
        results = self._session.run(None, feeds)
        outputs = [NumpyCodec.encode_output(name=spec.name, payload=np.asarray(value))
                   for spec, value in zip(self._session.get_outputs(), results, strict=True)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
