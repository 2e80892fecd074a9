"""Dataset conversion (BraTS 2018-2024, FeTS, MSD -> one canonical nnU-Net raw dataset) and the phantom generator.

* :mod:`.formats`: the one table of formats (file names, label conventions, regions, discovery rules);
* :mod:`.convert`: discovery, checks and atomic writing of ``$nnUNet_raw/DatasetXXX_NAME``;
* :mod:`.labels`: original labels <-> nnU-Net labels, and ``labels-back``;
* :mod:`.phantom`: synthetic cases on ICBM152 anatomy, written in any format's source layout;
* :mod:`.cli`: the ``convert``, ``labels-back`` and ``phantom`` subcommands.
"""
