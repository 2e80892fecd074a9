"""``nnunet-missingmod demo``: the point of the plugin in one run.

Phantom BraTS cases on real anatomy (training and held-out test cases with distinct ids) → our converter → stock
``nnUNetv2_plan_and_preprocess`` → ``nnUNetv2_train`` of stock nnU-Net training (``FullSetTrainer``) and of the
missing-modality trainers at equal iterations → ``evaluate`` of every model on the held-out cases under all 15
modality subsets → one comparison table (``comparison.md``/``.json``) and plot (``comparison.png``).

Modules: :mod:`.costs` (measured time per stage, for the up-front estimate), :mod:`.pipeline` (the stages, their
reuse and their progress bars), :mod:`.comparison` (table and plot), :mod:`.cli` (the subcommand).
"""
