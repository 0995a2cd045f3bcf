"""dasgen: label-true diffusion translation of synthetic segmentation datasets.

Implements Peng et al., "Diffusion-based Image Translation with Label Guidance for Domain Adaptive Semantic
Segmentation" (ICCV 2023) as a reproducible, versioned dataset pipeline.
"""

__version__ = "0.1.0"
