"""The demo's time estimate: iteration counts from the one budget table, per-trainer factors, the sum of stages."""
import pytest

from nnunet_missingmod.demo import costs
from nnunet_missingmod.demo.pipeline import DataSettings
from nnunet_missingmod.training.naming import BUDGETS

DATA = DataSettings(cases=9, test_cases=3, spacing_mm=costs.REFERENCE_SPACING_MM)


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_budget_iterations_come_from_the_budget_table(budget):
    epochs, per_epoch = costs.budget_iterations(budget)
    assert epochs * per_epoch == BUDGETS[budget].iterations
    assert (epochs, per_epoch) == (BUDGETS[budget].num_epochs, BUDGETS[budget].num_iterations_per_epoch)


def test_training_time_grows_with_iterations_trainer_factor_and_voxels():
    small = costs.training_seconds("ModalityDropoutTrainer", "small", "cpu", DATA)
    medium = costs.training_seconds("ModalityDropoutTrainer", "medium", "cpu", DATA)
    c = costs.COSTS["cpu"]
    extra_iterations = BUDGETS["medium"].iterations - BUDGETS["small"].iterations
    assert medium - small == pytest.approx(extra_iterations * c.seconds_per_iteration)
    factor = costs.TRAINER_TIME_FACTOR["cpu"]["CCSDTrainer_small"]
    ccsd = costs.training_seconds("CCSDTrainer_small", "small", "cpu", DATA)
    iterations_cost = BUDGETS["small"].iterations * c.seconds_per_iteration
    assert ccsd - small == pytest.approx(iterations_cost * (factor - 1))
    finer = DataSettings(cases=9, test_cases=3, spacing_mm=costs.REFERENCE_SPACING_MM / 2)
    finer_seconds = costs.training_seconds("ModalityDropoutTrainer", "small", "cpu", finer)
    assert finer_seconds - c.train_startup_s == pytest.approx(8 * (small - c.train_startup_s))  # 8x the voxels


def test_an_ablation_costs_like_its_family_and_unknown_trainers_like_stock():
    factors = costs.TRAINER_TIME_FACTOR["cpu"]
    assert costs._factor("CCSDTrainer_noKD_small", "cpu") == factors["CCSDTrainer_small"]
    assert costs._factor("MSTKDTrainer_noGSME", "cpu") == factors["MSTKDTrainer"]
    assert costs._factor("FullSetTrainer", "cpu") == 1.0


def test_total_is_the_sum_of_the_stages():
    trainers = ["FullSetTrainer", "CCSDTrainer_small"]
    stages = (costs.phantom_seconds(DATA.cases + DATA.test_cases, DATA.spacing_mm) + costs.convert_seconds(DATA)
              + costs.plan_seconds(DATA)
              + sum(costs.training_seconds(t, "small", "cpu", DATA) + costs.evaluation_seconds(t, "cpu", DATA)
                    for t in trainers))
    assert costs.total_seconds(trainers, "small", "cpu", DATA) == pytest.approx(stages)


def test_every_trainer_the_demo_trains_or_prices_has_a_sibling_for_every_budget():
    """The demo trains ``X<suffix>`` of the chosen budget (naming.with_budgets): every default trainer and every
    trainer with a measured time factor must have one for each budget."""
    from nnunet_missingmod.demo.pipeline import DEFAULT_ROUTED, DEFAULT_TRAINERS
    from nnunet_missingmod.training.naming import trainer_registry
    registry = trainer_registry()
    names = {DEFAULT_ROUTED, *DEFAULT_TRAINERS["cpu"], *DEFAULT_TRAINERS["cuda"], *costs.TRAINER_TIME_FACTOR["cpu"],
             *costs.TRAINER_TIME_FACTOR["cuda"]}
    for name in names:
        for budget in BUDGETS.values():
            assert name + budget.suffix in registry, name + budget.suffix
