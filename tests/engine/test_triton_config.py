"""A served version's configuration as Triton's ModelConfig (engine/triton_config.py).

That the messages match Triton's numbers is tests/engine/test_protocol.py's wire-format test.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2

from conveyor.engine.model_config import DynamicBatching, ModelConfig, TensorSpec, VersionPolicy
from conveyor.engine.triton_config import triton_datatype, triton_model_config


def test_every_oip_datatype_has_its_triton_type() -> None:
    from conveyor.engine.tensors import DATATYPES

    for datatype in DATATYPES:
        name = model_config_pb2.DataType.Name(triton_datatype(datatype))
        assert name == ("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def _config(**fields: object) -> ModelConfig:
    spec = TensorSpec("x", "FP32", (-1, 3))
    return ModelConfig(
        **{
            "name": "m",
            "platform": "torch_export",
            "max_batch_size": 4,
            "inputs": (spec,),
            "outputs": (spec,),
            **fields,
        }
    )


def test_accelerators_parameters_and_policies() -> None:
    config = triton_model_config(
        _config(
            cpu_accelerators=("conveyor_mlp",),
            parameters={"drift_threshold": "0.1", "window": 20000, "tags": ["a"]},
        ),
        instance_count=1,
        version_policy=VersionPolicy("specific", versions=(1, 3)),
    )
    accelerators = config.optimization.execution_accelerators.cpu_execution_accelerator
    assert [a.name for a in accelerators] == ["conveyor_mlp"]
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "drift_threshold": "0.1",
        "window": "20000",
        "tags": '["a"]',
    }
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert list(config.input[0].dims) == [-1, 3]
    # Decoded by Triton's own message, as tritonclient does.
    theirs = model_config_pb2.ModelConfig.FromString(config.SerializeToString())
    assert theirs.optimization.execution_accelerators.cpu_execution_accelerator[0].name == (
        "conveyor_mlp"
    )
    assert theirs.version_policy.WhichOneof("policy_choice") == "specific"


def test_counts_beyond_tritons_32_bit_fields_are_sent_as_their_largest() -> None:
    huge = 2**40
    config = triton_model_config(
        _config(
            max_batch_size=huge,
            dynamic_batching=DynamicBatching(preferred_batch_size=(huge,), max_queue_size=huge),
        ),
        instance_count=huge,
        version_policy=VersionPolicy("latest", num_versions=huge),
    )
    assert config.max_batch_size == 2**31 - 1
    assert list(config.dynamic_batching.preferred_batch_size) == [2**31 - 1]
    assert config.instance_group[0].count == 2**31 - 1
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 2**32 - 1
    assert config.version_policy.latest.num_versions == 2**32 - 1
