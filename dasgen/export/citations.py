"""What a dataset card must credit: the method's paper, the source dataset the labels come from, and the target
dataset the translation model learnt its style from, each with its BibTeX and the page that states its terms."""

from __future__ import annotations

from typing import NamedTuple


class Reference(NamedTuple):
    name: str  # how the card names it
    bibtex: str
    terms_url: str | None  # where its authors state the terms of use (None: nothing beyond this project's)


PAPER = Reference(
    "Peng et al., ICCV 2023",
    """@inproceedings{peng2023diffusion,
  title     = {Diffusion-based Image Translation with Label Guidance for Domain Adaptive Semantic Segmentation},
  author    = {Peng, Duo and Hu, Ping and Ke, Qiuhong and Liu, Jun},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}""",
    None,
)

DATASETS: dict[str, Reference] = {
    "gta5": Reference(
        "GTA5 (Richter et al., ECCV 2016)",
        """@inproceedings{richter2016playing,
  title     = {Playing for Data: Ground Truth from Computer Games},
  author    = {Richter, Stephan R. and Vineet, Vibhav and Roth, Stefan and Koltun, Vladlen},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2016}
}""",
        "https://download.visinf.tu-darmstadt.de/data/from_games/",
    ),
    "synthia": Reference(
        "SYNTHIA (Ros et al., CVPR 2016)",
        """@inproceedings{ros2016synthia,
  title     = {The {SYNTHIA} Dataset: A Large Collection of Synthetic Images for Semantic Segmentation of Urban Scenes},
  author    = {Ros, German and Sellart, Laura and Materzynska, Joanna and Vazquez, David and Lopez, Antonio M.},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}""",
        "https://synthia-dataset.net/",
    ),
    "cityscapes": Reference(
        "Cityscapes (Cordts et al., CVPR 2016)",
        """@inproceedings{cordts2016cityscapes,
  title     = {The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author    = {Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and Enzweiler, Markus and
               Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and Schiele, Bernt},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}""",
        "https://www.cityscapes-dataset.com/license/",
    ),
}


def dataset_reference(kind: str | None) -> Reference | None:
    """The reference of a dataset kind (``gta5``, ``synthia``, ``cityscapes``), or None (toy, plain folders)."""
    return DATASETS.get((kind or "").lower())
