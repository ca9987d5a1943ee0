"""The generator's checks of a request: the core's (`promptdex.generation.check_request`) plus what needs diffusers
(the model names something loadable, the sampler class exists, the schedule suits it).

The request model and payload kinds live in `promptdex.generation`. Messages name fields as the caller sent
them: the worker and the API say `steps`; the CLI says `--steps` (`flags=True`).
"""

from __future__ import annotations

from collections.abc import Callable

from promptdex.errors import InvalidFields, InvalidInput
from promptdex.generation import GenerateRequest, check_request

# The CLI's option for each request field (fields not listed are --name-with-dashes).
FLAGS = {"prompt": "PROMPT", "negative_prompt": "--negative", "width": "--size", "height": "--size",
         "model_config_path": "--model-config", "init_image": "--init-image"}


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def as_flags(exc: InvalidFields) -> InvalidInput:
    """The same problems with the CLI's option names ("--steps: 0 is not accepted ...")."""
    text = "; ".join(f"{flag(name)}: {name + ' ' if flag(name) == '--size' else ''}{message}"
                     for name, message in exc.fields)
    return InvalidInput(exc.where + text)


def check_inputs(request: GenerateRequest, *, where: str = "", flags: bool = True,
                 count_tokens: Callable[[str], int] | None = None) -> None:
    """Validate every setting of a filled-in request before any model is loaded; InvalidInput names the field."""
    from generator.loading import classify_model, classify_vae
    from generator.samplers import resolve_sampler, scheduler_class

    try:
        check_request(request, where=where, classes=True, count_tokens=count_tokens)
    except InvalidFields as exc:
        raise (as_flags(exc) if flags else exc) from exc
    def named(field: str) -> str:
        return flag(field) if flags else field

    try:
        classify_model(request.model or "", argument=named("model"))
        if request.vae:
            classify_vae(request.vae, argument=named("vae"))
        if request.refiner:
            classify_model(request.refiner, argument=named("refiner"))
        if request.scheduler_class is not None:
            scheduler_class(request.scheduler_class)
        else:
            resolve_sampler(request.sampler or "", request.schedule, arguments=(named("sampler"), named("schedule")))
    except InvalidInput as exc:
        raise InvalidInput(f"{where}{exc}") from exc
