"""RepositoryModelLoad / Unload request fields beyond the model name.

Triton's ``config`` load parameter is implemented: a JSON model configuration in
config.json's vocabulary (checked by the same parser), served by that load in place
of every version's config.json. Everything else that would be ignored is refused
with INVALID_ARGUMENT naming it (conveyor never ignores a setting): Triton's
``file:<path>`` parameters (model files sent with the request; conveyor serves only
the repository's files), any other load parameter, and a non-empty
``repository_name`` (a server serves one repository, which has no name of its own).
Unload takes Triton's ``unload_dependents`` (conveyor models have no dependents, so
either value unloads just the model) and refuses anything else likewise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from conveyor.engine.errors import InvalidArgument, ModelLoadError
from conveyor.engine.model_config import ModelConfig, parse_config


def check_repository_name(repository_name: str) -> None:
    """Refuse a repository other than the server's own (which has no name: leave it empty)."""
    if repository_name:
        raise InvalidArgument(
            f"repository_name {repository_name!r}: this server serves one model repository; "
            "leave repository_name empty"
        )


def config_override(parameters: Mapping[str, Any]) -> ModelConfig | None:
    """The ``config`` parameter of a RepositoryModelLoad request, parsed (None when
    absent); INVALID_ARGUMENT naming the parameter for any other or a bad value."""
    for key in sorted(parameters):
        if key == "config":
            continue
        if key.startswith("file:"):
            raise InvalidArgument(
                f"parameter {key!r}: model files cannot be sent with RepositoryModelLoad; "
                "put them in the model repository"
            )
        raise InvalidArgument(
            f"parameter {key!r} is not supported (RepositoryModelLoad takes 'config')"
        )
    if "config" not in parameters:
        return None
    value = parameters["config"]
    if value.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(
            "parameter 'config': expected a string_param holding a JSON model configuration"
        )
    try:
        data = json.loads(value.string_param)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, nesting
        raise InvalidArgument(f"parameter 'config': not valid JSON: {exc}") from None
    try:
        return parse_config(data, "parameter 'config'")
    except ModelLoadError as exc:
        raise InvalidArgument(str(exc)) from None


def check_unload_parameters(parameters: Mapping[str, Any]) -> None:
    """RepositoryModelUnload's parameters: ``unload_dependents`` (a bool_param, which
    tritonclient always sends) is accepted; any other is INVALID_ARGUMENT naming it."""
    for key in sorted(parameters):
        if key != "unload_dependents":
            raise InvalidArgument(
                f"parameter {key!r} is not supported (RepositoryModelUnload takes "
                "'unload_dependents')"
            )
        if parameters[key].WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgument("parameter 'unload_dependents': expected a bool_param")
