"""Draw the four contrasts and the label of one phantom case (docs/phantom.png).

    .venv/bin/python scripts/phantom_figure.py [--seed 3] [--spacing 2] [-o docs/phantom.png]
"""
import argparse

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_missingmod.conversion.phantom import generate_case  # noqa: E402
from nnunet_missingmod.modalities import MODALITIES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("-o", default="docs/phantom.png")
    args = parser.parse_args()
    case = generate_case(args.seed, args.spacing, "brats2021")
    axial = int(np.argmax((case.label > 0).sum(axis=(0, 1))))  # the slice with the most tumour
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    for ax, modality in zip(axes, MODALITIES):
        ax.imshow(np.rot90(case.images[modality][:, :, axial]), cmap="gray")
        ax.set_title(modality)
    axes[4].imshow(np.rot90(case.label[:, :, axial]), cmap="viridis", interpolation="nearest")
    axes[4].set_title("label: 1 NCR, 2 ED, 4 ET")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"phantom case, seed {args.seed}, {args.spacing:g} mm, axial slice {axial}")
    plt.tight_layout()
    fig.savefig(args.o, dpi=70)


if __name__ == "__main__":
    main()
