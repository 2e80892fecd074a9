"""inference/case.py: the per-case steps shared by the predictor and its background workers."""
from types import SimpleNamespace

import numpy as np
import torch

from nnunet_missingmod.inference.case import export_arguments


def test_export_arguments_are_export_cases_arguments_with_numpy_logits():
    """What ``evaluate`` and the predictor hand to export_case (here or in an export worker)."""
    model = SimpleNamespace(configuration_manager="configuration", plans_manager="plans",
                            dataset_json={"file_ending": ".nii.gz"}, nnunet_log="nnunet.log")
    logits = torch.arange(6, dtype=torch.float32).view(1, 2, 3)
    arguments = export_arguments(model, logits, {"spacing": [1, 1, 1]}, "/out/case", True)
    assert isinstance(arguments[0], np.ndarray) and np.array_equal(arguments[0], logits.numpy())
    assert arguments[1:] == ({"spacing": [1, 1, 1]}, "configuration", "plans", {"file_ending": ".nii.gz"},
                             "/out/case", True, "nnunet.log")
    assert export_arguments(model, arguments[0], {}, "/out/case")[0] is arguments[0]  # numpy stays as it is
