"""Plumbing shared by the stages and the tools: where ``params.yaml`` (via :mod:`dasgen.config`) is mapped onto the
libraries' plain arguments.

- :mod:`~dasgen.pipeline.workspace`: the directory tree of one pipeline run
- :mod:`~dasgen.pipeline.common`: config -> dataset readers and devices, JSON helpers, ``--domains`` ranges
- :mod:`~dasgen.pipeline.chains`: the noise schedules and each domain's reverse chain
- :mod:`~dasgen.pipeline.guided`: the ``Guidance`` and sampler options of a domain
- :mod:`~dasgen.pipeline.augment`: the noisy+masked segmenter augmentation of Supp. C
- :mod:`~dasgen.pipeline.segmenters`: config -> segmenters, scoring on the labelled target set
- :mod:`~dasgen.pipeline.image_quality`, :mod:`~dasgen.pipeline.diffusion_fidelity`: image roughness, DDPM round trip
- :mod:`~dasgen.pipeline.distributed`: torchrun ranks for the translate stage
- :mod:`~dasgen.pipeline.code_deps`, :mod:`~dasgen.pipeline.dvc_yaml`: each stage's derived code deps, and
  ``dvc.yaml`` generated from ``params.yaml``
"""
