"""Robustness evaluation over modality subsets.

* :mod:`.metrics`: Dice, HD95, AURC on numpy masks (numpy/scipy only);
* :mod:`.regions`: which labels make up WT/TC/ET (dataset.json, ``--regions``, BraTS presets);
* :mod:`.scoring`: reading label images, matching cases, scoring folders in parallel into long-format records;
* :mod:`.report`: metrics.csv, summary.json, summary.md and the plots;
* :mod:`.cli`: the ``score`` (and ``evaluate``) subcommands.

Nothing is imported here, so that scoring worker processes stay light.
"""
