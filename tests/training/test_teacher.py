"""A finished run as a teacher or a starting point (training/teacher.py): reading its checkpoint, its trainer and
network, whether it fits the student's data, loading its weights strictly or where they match, and one error naming
the file, its trainer and the trainer to use for every run that cannot be used."""
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import plans_and_dataset_json
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTeacherTrainer_small
from nnunet_missingmod.training.methods.selfdistill.trainer import RobustifyTrainer
from nnunet_missingmod.training.teacher import (
    TEACHER_ENV, FinishedRun, build_network_of_run, check_teacher_fits, find_trainer_class, load_finished_run,
    load_network_weights, plain_weights, same_state_dict_layout)
from trainer_helpers import make_trainer, module_parameters


def test_a_finished_run_is_read_from_its_fold_folder_or_its_file(stock_run):
    path, _ = stock_run
    for location in (path, path.parent):
        run = load_finished_run(str(location))
        assert isinstance(run, FinishedRun) and run.path == str(path)
        assert run.trainer_name == "nnUNetTrainer" and run.configuration == "3d_fullres"
        assert run.plans_name == "nnUNetPlans" and "channel_names" in run.dataset_json
        assert run.describe() == f"{path} (trainer nnUNetTrainer, plans nnUNetPlans, configuration 3d_fullres)"


def test_what_is_no_finished_run_is_one_error_naming_the_variable_and_the_path(tmp_path):
    (tmp_path / "fold_0").mkdir()
    with pytest.raises(MissingModError, match=f"{TEACHER_ENV}=.*fold_0: the folder has no checkpoint_final.pth"):
        load_finished_run(str(tmp_path / "fold_0"))
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(MissingModError, match="MY_VAR=.*other.pth is not an nnU-Net checkpoint"):
        load_finished_run(str(tmp_path / "other.pth"), variable="MY_VAR")


def test_the_trainer_class_of_a_run_is_ours_or_nnunets():
    assert find_trainer_class("ModalityDropoutTrainer") is ModalityDropoutTrainer
    assert find_trainer_class("nnUNetTrainer") is nnUNetTrainer
    with pytest.raises(MissingModError, match="'NoSuchTrainer'.*neither nnU-Net's nor ours"):
        find_trainer_class("NoSuchTrainer")


def test_a_runs_network_is_built_by_its_trainer_and_loads_strictly_or_where_names_and_shapes_match(stock_run):
    path, stock_weights = stock_run
    run = load_finished_run(str(path))
    network = build_network_of_run(run, enable_deep_supervision=True)
    assert sorted(load_network_weights(network, run, "the stock network", "nnUNetTrainer")) == \
        sorted(network.state_dict())
    assert torch.equal(module_parameters(network), stock_weights)
    assert same_state_dict_layout(network, run.network_weights)

    smaller = FinishedRun(run.path, run.trainer_name, run.plans, run.configuration, run.dataset_json,
                          {k: v for k, v in run.network_weights.items() if not k.startswith("decoder.")})
    with pytest.raises(MissingModError, match=r"checkpoint_final.pth \(trainer nnUNetTrainer.*does not fit the "
                                              r"network: Error.*Use a run of -tr nnUNetTrainer"):
        load_network_weights(build_network_of_run(run, True), smaller, "the network", "nnUNetTrainer")
    loaded = load_network_weights(build_network_of_run(run, True), smaller, "the network", "nnUNetTrainer",
                                  strict=False)
    assert loaded and all(not k.startswith("decoder.") for k in loaded)
    unrelated = FinishedRun(run.path, run.trainer_name, run.plans, run.configuration, run.dataset_json,
                            {"something.else": torch.zeros(1)})
    with pytest.raises(MissingModError, match="shares no weights with the network; use a run of -tr X"):
        load_network_weights(network, unrelated, "the network", "X", strict=False)


def test_a_run_on_other_data_does_not_fit_naming_each_difference(nnunet_root, stock_run):
    path, _ = stock_run
    run = load_finished_run(str(path))
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    check_teacher_fits(run, plans, "3d_fullres", dataset_json, "Student", "nnUNetTrainer")  # its own data fits
    other = dict(dataset_json, labels={"background": 0, "tumour": 1})
    with pytest.raises(MissingModError, match=r"does not fit Student \(plans nnUNetPlans, configuration 3d_fullres\): "
                                              r"labels: .*nnUNetv2_train DATASET 3d_fullres FOLD -tr Teacher -p "
                                              r"nnUNetPlans"):
        check_teacher_fits(run, plans, "3d_fullres", other, "Student", "Teacher")


def test_teachers_that_do_not_fit_are_refused_naming_file_trainer_and_the_trainer_to_use(
        nnunet_root, stock_run, tmp_path, monkeypatch):
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    with pytest.raises(MissingModError, match=f"{TEACHER_ENV}.*-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)

    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    monkeypatch.setenv(TEACHER_ENV, str(not_a_checkpoint))
    with pytest.raises(MissingModError, match="notes.pth is not a PyTorch checkpoint"):
        make_trainer(nnunet_root, RobustifyTrainer)
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "missing"))
    with pytest.raises(MissingModError, match="missing: no such checkpoint file or fold folder"):
        make_trainer(nnunet_root, RobustifyTrainer)

    path, _ = stock_run
    other_plans = torch.load(path, weights_only=False)
    configuration = other_plans["init_args"]["plans"]["configurations"]["3d_fullres"]
    configuration["patch_size"] = [p * 2 for p in configuration["patch_size"]]
    torch.save(other_plans, tmp_path / "other_plans.pth")
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "other_plans.pth"))
    with pytest.raises(MissingModError, match=r"other_plans.pth \(trainer nnUNetTrainer.*patch_size.*"
                                              r"-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)

    mstkd = make_trainer(nnunet_root, MSTKDTeacherTrainer_small)  # another architecture: robustify cannot start
    mstkd.save_checkpoint(str(tmp_path / "mstkd.pth"))
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "mstkd.pth"))
    with pytest.raises(MissingModError, match=r"mstkd.pth \(trainer MSTKDTeacherTrainer_small.*does not fit "
                                              r"RobustifyTrainer's network.*-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)


def test_plain_weights_strips_the_ddp_prefix_except_from_the_networks_own_names():
    class HasModuleChild(torch.nn.Module):  # a submodule literally called "module", as DDP's own wrapper has
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Linear(2, 2)

    net = HasModuleChild()
    own = net.state_dict()
    assert plain_weights({"module.w": 1, "b": 2}) == {"w": 1, "b": 2}
    assert plain_weights(own, own.keys()).keys() == own.keys()  # "module.weight" is the network's own name
    ddp_saved = {"module." + k: v for k, v in own.items()}
    assert same_state_dict_layout(net, ddp_saved)
    assert not same_state_dict_layout(net, {"module.weight": own["module.weight"]})
