"""SGG on the toy domains (tiny workspace): at the same seeds, guidance raises g's agreement with the source label."""

from __future__ import annotations

import torch

from dasgen.config import load_config
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.unet import load_denoiser, make_eps_fn
from dasgen.guidance.arrangement import guidance_plan
from dasgen.guidance.sampler import translate
from dasgen.guidance.sgg import Guidance
from dasgen.seeding import image_generator
from dasgen.segment.checkpoint import load_segmenter
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.workspace import Workspace


def test_lambda_80_raises_agreement_on_the_toy_at_the_same_seeds(tiny_workspace):
    config = load_config(tiny_workspace / "params.yaml")
    ws = Workspace(tiny_workspace)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, ws.root), entries, config.data.resolution)
    ids = [e.id for e in entries][:8]
    x0, labels = store.batch(ids)
    eps = make_eps_fn(load_denoiser(ws.diffusion_model))
    g0 = load_segmenter(ws.segmenter_path(0)).requires_grad_(False)
    chain = base_schedule(config).truncated(20)

    def agreement(guidance):
        generators = [image_generator(0, 1, i) for i in ids]
        x = translate(x0, denoiser=eps, schedule=chain, generators=generators,
                      guide=None if guidance is None else guidance.for_labels(labels))
        with torch.inference_mode():
            pred = g0(x).argmax(1)
        valid = labels != 255
        return float((pred[valid] == labels[valid]).float().mean()), float((x - x0).abs().mean())

    unguided, moved_unguided = agreement(None)
    guided, moved_guided = agreement(Guidance(segmenter=g0, lambda_=80.0, plan=guidance_plan("alternate", 20, 0)))
    # the tiny workspace's g_0 is trained for 6 iterations only, so the gain is small here; docs/results.md measures it
    # on the full toy (32 images, t = 100: 47.5 -> 55.5); the direction must hold at the same seeds
    assert guided > unguided
    assert moved_guided < 2 * moved_unguided  # still a translation, not noise
