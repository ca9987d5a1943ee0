"""render_batch's per-step callback on the tiny SD 1.x pipeline: one call per step, same pixels, stops on error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from generator.environment import environment_record, torch_threads
from generator.loading import LoadedModel, load_pipeline
from generator.output import encode_png
from generator.render import BatchItem, RenderSpec, make_params, make_record, render_batch
from generator.samplers import make_scheduler, resolve_sampler, scheduler_config
from generator.tiny import ensure_tiny_model
from promptdex.params import format_a1111

THREADS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    models = tmp_path_factory.getbasetemp() / "generator-models"  # shared with the other generator tests
    ensure_tiny_model(models)
    loaded = load_pipeline("tiny", device="cpu", models_path=models)
    yield loaded
    loaded.release()


def render_spec(loaded: LoadedModel, *, sampler: str = "Euler a", **fields: Any) -> RenderSpec:
    """A spec as the generator makes one: the sampler's scheduler on the model's own scheduler config."""
    choice = resolve_sampler(sampler, None)
    config = scheduler_config(make_scheduler(choice, loaded.base_scheduler_config))
    values: dict[str, Any] = {"task": "txt2img", "sampler": choice.sampler, "schedule": choice.schedule,
                              "scheduler_class": choice.cls,
                              "scheduler_config_json": json.dumps(config, sort_keys=True),
                              "steps": 3, "cfg": 7.0, "width": 64, "height": 64, **fields}
    return RenderSpec(**values)


class Steps:
    """An on_step that keeps (step, steps, latents shape) and can raise at a chosen step."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, int, tuple[int, ...]]] = []
        self.fail_at = fail_at

    def __call__(self, step: int, steps: int, latents: Any) -> None:
        assert isinstance(latents, torch.Tensor)
        self.calls.append((step, steps, tuple(latents.shape)))
        if step == self.fail_at:
            raise Cancelled(f"cancelled at step {step}")


class Cancelled(Exception):
    pass


def png(loaded: LoadedModel, spec: RenderSpec, items: list[BatchItem], image: Any) -> bytes:
    record = make_record(loaded, spec, items, 0, environment_record(loaded.device, loaded.dtype))
    return encode_png(image, parameters=format_a1111(make_params(loaded, spec, items[0])), record=record)[0]


def test_txt2img_reports_every_step_once_in_order(tiny: LoadedModel) -> None:
    steps = Steps()
    with torch_threads(THREADS):
        out = render_batch(tiny, render_spec(tiny, steps=3), [BatchItem("a red fox", "", 1),
                                                              BatchItem("a red fox", "", 2)], on_step=steps)
    assert len(out) == 2
    assert steps.calls == [(1, 3, (2, 4, 8, 8)), (2, 3, (2, 4, 8, 8)), (3, 3, (2, 4, 8, 8))]  # 64 px / 8 = 8


def test_img2img_reports_the_steps_the_strength_leaves(tiny: LoadedModel) -> None:
    from PIL import Image

    spec = render_spec(tiny, task="img2img", init_image="0" * 64, strength=0.5, steps=4)
    steps = Steps()
    with torch_threads(THREADS):
        render_batch(tiny, spec, [BatchItem("x", "", 1)], init_image=Image.new("RGB", (64, 64), (200, 30, 30)),
                     on_step=steps)
    expected = int(4 * 0.5)  # diffusers' img2img runs the last int(steps * strength) of the schedule
    assert [c[:2] for c in steps.calls] == [(i, expected) for i in range(1, expected + 1)]
    assert tiny.img2img().num_timesteps == expected


def test_the_callback_does_not_change_the_bytes(tiny: LoadedModel) -> None:
    spec = render_spec(tiny, sampler="DPM++ 2M", steps=3)
    items = [BatchItem("a red fox, night", "blurry", 7)]
    with torch_threads(THREADS):
        plain = render_batch(tiny, spec, items)[0].image
        watched = render_batch(tiny, spec, items, on_step=Steps())[0].image
        assert png(tiny, spec, items, plain) == png(tiny, spec, items, watched)
    assert np.asarray(plain).std() > 0  # a real image, not a blank one


def test_an_exception_in_on_step_stops_the_render_before_decoding(tiny: LoadedModel,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    decode = tiny.pipeline.vae.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decoded.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(tiny.pipeline.vae, "decode", counting_decode)
    steps = Steps(fail_at=2)
    result: Any = None
    with torch_threads(THREADS), pytest.raises(Cancelled, match="cancelled at step 2"):
        result = render_batch(tiny, render_spec(tiny, steps=4), [BatchItem("x", "", 1)], on_step=steps)
    assert result is None
    assert [c[:2] for c in steps.calls] == [(1, 4), (2, 4)] and decoded == []
    with torch_threads(THREADS):
        render_batch(tiny, render_spec(tiny, steps=2), [BatchItem("x", "", 1)], on_step=Steps())
    assert decoded  # a render that is not stopped does decode (so the check above means something)
