"""A toy missing-modality method, written outside the package the way a user writes their own: one folder of the
shape of ``nnunet_missingmod/training/methods/<name>/`` and nothing edited outside it.

* ``network.py``: a wrapper of nnU-Net's planned network (a learned gain per input channel in front of it);
* ``losses.py``: its one loss (consistency of the output without the missing sequences with the full-input output);
* ``trainer.py``: its settings (a frozen dataclass, checked when built) and ``ToyTrainer`` with its budget siblings;
* ``ablations.py``: one table of settings from which the ablation classes are generated.

Registering a method of your own: put the folder that holds the package on ``PYTHONPATH`` and name the package in
``nnUNet_missingmod_methods`` (comma-separated, beside the built-in methods); nnU-Net then finds its trainers through
the package's trainer directory, for training and for prediction alike, so both commands need the same environment::

    export PYTHONPATH=/path/to/tests:$PYTHONPATH        # the folder that holds toy_method/
    export nnUNet_missingmod_methods=toy_method
    export nnUNet_extTrainer=$(nnunet-missingmod trainer-dir)
    nnUNetv2_train DATASET 3d_fullres 0 -tr ToyTrainer_debug
    nnunet-missingmod predict -i IN -o OUT -d DATASET -c 3d_fullres -f 0 -tr ToyTrainer_debug

``tests/training/test_toy_method.py`` does exactly this.
"""
