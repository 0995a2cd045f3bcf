"""``dasgen plan``: the PTL schedule and its cost in work units, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from dasgen.config import Config
from dasgen.guidance.arrangement import guidance_plan
from dasgen.seeding import image_seed
from dasgen.pipeline.chains import domain_chain, domain_noise_levels

ASSUMED_CLASSES_PER_IMAGE = 8.0  # LCG copies per image when the source has not been scanned (GTA5 averages ~12)


def finetune_images_per_domain(config: Config) -> int:
    """Images one domain's fine-tune trains on (Eq. 12): a batch of adapted images per iteration, and as many source
    images again unless L_src is dropped."""
    ft = config.ptl.finetune
    return ft.iters * ft.batch_size * (2 if ft.use_src_loss else 1)


@dataclass(frozen=True)
class DomainCost:
    n: int
    t: int
    steps: int
    images: int
    lcg_steps: int
    gsg_steps: int

    def unet_forwards(self) -> int:
        """One U-Net forward per image per reverse step."""
        return self.images * self.steps


def schedule_costs(config: Config, source_images: int) -> list[DomainCost]:
    """Per-domain reverse steps, images and LCG/GSG step counts for the current params."""
    costs = []
    for n, t in enumerate(domain_noise_levels(config.ptl), start=1):
        steps = len(domain_chain(config, n))
        images = source_images if n == config.ptl.N else min(config.ptl.images_per_domain, source_images)
        modules = guidance_plan(config.sgg.arrangement, steps, image_seed(config.run.seed, n, "plan"))
        costs.append(DomainCost(n=n, t=t, steps=steps, images=images, lcg_steps=modules.count("lcg"),
                                gsg_steps=modules.count("gsg")))
    return costs


def plan_totals(config: Config, costs: list[DomainCost], classes_per_image: float) -> dict:
    """Totals in work units: U-Net forwards, segmenter forward+backward passes, fine-tune iterations."""
    unet = sum(c.unet_forwards() for c in costs)
    gsg_passes = sum(c.gsg_steps * c.images for c in costs)
    lcg_passes = sum(c.lcg_steps * c.images for c in costs) * classes_per_image
    return {
        "domains": len(costs),
        "images_translated": sum(c.images for c in costs),
        "final_images": costs[-1].images if costs else 0,
        "reverse_steps": sum(c.steps for c in costs),
        "unet_forwards": unet,
        "guided_image_steps": sum((c.lcg_steps + c.gsg_steps) * c.images for c in costs),
        "segmenter_passes_gsg": gsg_passes,
        "segmenter_passes_lcg": round(lcg_passes),
        "classes_per_image": classes_per_image,
        "finetune_iterations": config.ptl.finetune.iters * len(costs),
        "finetune_images": finetune_images_per_domain(config) * len(costs),
    }
