"""nnU-Net's local logger with one series per extra loss term (training/loss_log.py): the key, a series padded for a
checkpoint written before the term existed, and the fourth panel of ``progress.png``."""
import math

import matplotlib.image
import pytest

from nnunet_missingmod.training.loss_log import LossTermLocalLogger, loss_term_key

STOCK_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
              "epoch_start_timestamps", "epoch_end_timestamps")


def _log_epoch(logger, epoch, **terms):
    for key, value in [("mean_fg_dice", 0.5), ("ema_fg_dice", 0.5), ("dice_per_class_or_region", [0.5]),
                       ("train_losses", 1.0), ("val_losses", 1.0), ("lrs", 0.01),
                       ("epoch_start_timestamps", 10.0 * epoch), ("epoch_end_timestamps", 10.0 * epoch + 1)]:
        logger.log(key, value, epoch)
    for term, value in terms.items():
        logger.log(loss_term_key(term), value, epoch)


def _aspect(path) -> float:
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    return height / width


def test_each_term_is_a_train_series_beside_nnunets():
    assert loss_term_key("distill_kl") == "train_distill_kl"
    logger = LossTermLocalLogger(("kd", "adv"))
    assert set(logger.my_fantastic_logging) == set(STOCK_KEYS) | {"train_kd", "train_adv"}
    _log_epoch(logger, 0, kd=1e-9, adv=0.3)
    assert logger.get_value("train_kd", step=0) == 1e-9 and logger.get_value("train_adv", step=-1) == 0.3


def test_a_checkpoint_from_before_a_term_existed_gets_its_series_padded_with_nan():
    old = LossTermLocalLogger(("kd",))
    for epoch in range(2):
        _log_epoch(old, epoch, kd=0.1)
    resumed = LossTermLocalLogger(("kd", "new_term"))
    resumed.load_checkpoint(old.get_checkpoint())
    assert resumed.get_value("train_kd", step=None) == [0.1, 0.1]
    padded = resumed.get_value("train_new_term", step=None)
    assert len(padded) == 2 and all(math.isnan(v) for v in padded)  # aligned with the epochs already logged
    _log_epoch(resumed, 2, kd=0.2, new_term=0.5)
    assert resumed.get_value("train_new_term", step=2) == 0.5


def test_progress_plot_gets_a_fourth_panel_for_loss_terms_only_when_there_are_terms(tmp_path):
    with_terms, stock = tmp_path / "terms", tmp_path / "stock"
    with_terms.mkdir()
    stock.mkdir()
    logger = LossTermLocalLogger(("kd",))
    _log_epoch(logger, 0, kd=1e-9)
    logger.plot_progress_png(str(with_terms))
    assert _aspect(with_terms / "progress.png") == pytest.approx(72 / 30, rel=0.01)  # four panels
    plain = LossTermLocalLogger(())
    _log_epoch(plain, 0)
    plain.plot_progress_png(str(stock))
    assert _aspect(stock / "progress.png") == pytest.approx(54 / 30, rel=0.01)  # nnU-Net's own three panels
