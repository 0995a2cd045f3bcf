"""Where each stage reads and writes, relative to one workspace root (the repository, by default).

The layout is part of the artifact contract documented in the README; ``dvc.yaml`` names the same paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOMAIN_DIGITS = 3  # data/domains/001 ... sorts correctly up to 999 domains; widened automatically beyond


@dataclass(frozen=True)
class Workspace:
    """Paths of one pipeline run under ``root``."""

    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def source_pairs(self) -> Path:
        """Usable source pairs and the skipped ones with reasons (written by the scan stage)."""
        return self.data / "source_pairs.json"

    @property
    def diffusion_dir(self) -> Path:
        return self.data / "diffusion"

    @property
    def diffusion_model(self) -> Path:
        """The target DDPM in the diffusers layout (config.json + diffusion_pytorch_model.safetensors)."""
        return self.diffusion_dir / "model"

    @property
    def diffusion_state(self) -> Path:
        """Resumable training state, kept once training finishes (a re-run with the same settings and code restores
        it instead of training again)."""
        return self.diffusion_dir / "state"

    @property
    def roundtrip_png(self) -> Path:
        """The DDPM's round trip of real target photos, clean | phi^t for each fidelity level (train-diffusion)."""
        return self.metrics / "diffusion_roundtrip.png"

    @property
    def g0_dir(self) -> Path:
        return self.data / "g0"

    @property
    def g0_state(self) -> Path:
        """g_0's resumable training state, kept once training finishes (as :attr:`diffusion_state`)."""
        return self.g0_dir / "state"

    def domain_dir(self, n: int, total: int | None = None) -> Path:
        width = max(DOMAIN_DIGITS, len(str(total or 0)))
        return self.data / "domains" / f"{n:0{width}d}"

    def segmenter_path(self, n: int, total: int | None = None) -> Path:
        """g_n: g_0 from the source stage, g_n (n >= 1) inside domain n's artifact."""
        if n == 0:
            return self.g0_dir / "segmenter.safetensors"
        return self.domain_dir(n, total) / "segmenter.safetensors"

    def domain_metrics(self, n: int, total: int | None = None) -> Path:
        width = max(DOMAIN_DIGITS, len(str(total or 0)))
        return self.metrics / f"domain-{n:0{width}d}.json"
