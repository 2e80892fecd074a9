"""Training: the base trainer (``base``), what it is built from (``extra_modules``, ``nnunet_copies``, ``kd``,
``teacher``, ``loss_log``, ``features``), one package per method under ``methods/``, and the names nnU-Net looks up
(``naming``). Nothing is imported here, so that the command line starts fast; :func:`nnunet_missingmod.training.
naming.trainer_registry` imports the methods."""
