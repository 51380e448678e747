"""A served version's effective configuration as Triton's ``ModelConfig`` message.

The ModelConfig RPC answers with what the version actually runs with, as Triton
does: config.json with the server's flags applied (``--max-batch-size``,
``--max-queue-delay-microseconds``, ``--max-queue-size``, ``--instance-count``),
defaults filled in, and conveyor's spellings turned into Triton's (OIP ``FP32`` ->
``TYPE_FP32``, ``BYTES`` -> ``TYPE_STRING``; dims without the batch dimension).
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.engine.model_config import ModelConfig, TensorSpec, VersionPolicy
from conveyor.engine.protos import grpc_service_pb2 as pb

# Triton's fields for these counts are 32-bit; conveyor's limits are not. A larger
# value means "no practical bound" either way, so it is sent as the field's largest.
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def triton_datatype(datatype: str) -> int:
    """The ``inference.DataType`` value of an OIP datatype name (``BYTES`` is Triton's STRING)."""
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def triton_version_policy(policy: VersionPolicy) -> pb.ModelVersionPolicy:
    if policy.kind == "all":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=policy.versions)
        )
    return pb.ModelVersionPolicy(
        latest=pb.ModelVersionPolicy.Latest(num_versions=min(policy.num_versions, _UINT32_MAX))
    )


def _parameter(value: Any) -> pb.ModelParameter:
    """Triton's parameters are strings; config.json's free-form values are sent as JSON."""
    return pb.ModelParameter(string_value=value if isinstance(value, str) else json.dumps(value))


def triton_model_config(
    config: ModelConfig, *, instance_count: int, version_policy: VersionPolicy
) -> pb.ModelConfig:
    """Triton's ``ModelConfig`` for ``config``, a served version's effective configuration.

    ``instance_count`` is the worker threads the version runs and ``version_policy`` the
    policy the repository applies to the model; neither lives in the version's own config
    once a flag or the server's default decides it.
    """
    batching = config.dynamic_batching

    def tensor(cls: Any, spec: TensorSpec) -> Any:
        return cls(name=spec.name, data_type=triton_datatype(spec.datatype), dims=spec.shape)

    message = pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        version_policy=triton_version_policy(version_policy),
        max_batch_size=min(config.max_batch_size, _INT32_MAX),
        input=[tensor(pb.ModelInput, s) for s in config.inputs],
        output=[tensor(pb.ModelOutput, s) for s in config.outputs],
        instance_group=[
            pb.ModelInstanceGroup(
                # Triton names a model's n-th group "<model>_<n>".
                name=f"{config.name}_0",
                count=min(instance_count, _INT32_MAX),
                kind=pb.ModelInstanceGroup.KIND_CPU,
            )
        ],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=[min(p, _INT32_MAX) for p in batching.preferred_batch_size],
            max_queue_delay_microseconds=min(batching.max_queue_delay_microseconds, _UINT64_MAX),
            priority_levels=min(batching.priority_levels, _UINT64_MAX),
            # config.json's 0 means the lowest level; Triton's field holds the level itself.
            default_priority_level=min(
                batching.default_priority_level or batching.priority_levels, _UINT64_MAX
            ),
            default_queue_policy=pb.ModelQueuePolicy(
                timeout_action=pb.ModelQueuePolicy.REJECT,
                # No default queue timeout; each request may set its "timeout" parameter.
                default_timeout_microseconds=0,
                allow_timeout_override=True,
                max_queue_size=min(batching.max_queue_size, _UINT32_MAX),
            ),
        ),
        parameters={key: _parameter(value) for key, value in config.parameters.items()},
    )
    if config.cpu_accelerators:
        accelerators = pb.ModelOptimizationPolicy.ExecutionAccelerators
        message.optimization.execution_accelerators.CopyFrom(
            accelerators(
                cpu_execution_accelerator=[
                    accelerators.Accelerator(name=name) for name in config.cpu_accelerators
                ]
            )
        )
    return message
