"""The LightningModule that trains, evaluates and runs a CoAtNet image classifier.

Logged metric names (stable; configs and tests rely on them):
``train/loss``, ``train/acc1`` (of the step, accuracy against the *hard* labels even when the
batch is mixed), both on the steps where the loggers write (``trainer.log_every_n_steps``),
``val/loss``, ``val/acc1``,
``val/acc5``, ``test/loss``, ``test/acc1``, ``test/acc5`` (epoch averages). ``*/acc5`` is only
logged when there are more than 5 classes (otherwise it is always 1). Validation and test losses
are plain cross-entropy, without label smoothing. The learning rate of every parameter group is
logged as ``lr/<group name>`` (``lr/decay``, ``lr/no_decay``; per layer with ``layer_decay``) by the
``LearningRateMonitor`` that ``cli.py`` adds, on the same steps; the scheduler is named ``lr`` for it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from coatnet import CoAtNet, fold_batchnorm
from lightning_modules.hparam_ranges import (
    DecayFactor,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    ProperFraction,
    check_ranges,
)
from lightning_modules.mixing import MixupCutmix
from lightning_modules.model_overrides import CoAtNetOverrides, network_config, overrides_dict
from lightning_modules.optim import (
    SharedOnCopy,
    check_clipping_is_possible,
    layer_decay_groups,
    no_decay_names,
    warmup_cosine_scheduler,
    weight_decay_groups,
)
from lightning_modules.prediction import store_data_info
from lightning_modules.resilience.init_weights import load_init_from
from lightning_modules.resilience.network_match import check_checkpoint
from lightning_modules.steps import loggers_write_after, split_batch


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW as in the CoAtNet paper (peak lr 1e-3 for a global batch of 4096, wd 0.05).

    A named function rather than a lambda so that jsonargparse can print it in saved configs.
    """
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)


class ImageClassifier(LightningModule):
    """CoAtNet classifier with Mixup/CutMix, label smoothing and a per-step warm-up + cosine schedule.

    The range types of the arguments (``Fraction`` is [0, 1], ``ProperFraction`` [0, 1), ...) are checked
    while the CLI parses them, and on construction.

    Args:
        model_name: a name from ``coatnet.list_models()``.
        num_classes: classifier width; linked from the DataModule by ``cli.py``.
        image_size: ``(height, width)`` the model is built for; linked from the DataModule.
        model_overrides: ``CoAtNetConfig`` fields to change from the variant's (``drop_path_rate``,
            ``transformer.head_dim``, ...); a plain dict of them is taken too. Stored as a dict of the set fields.
        optimizer: called with the parameter groups; its ``weight_decay`` applies to weights only.
        layer_decay: layer-wise learning-rate decay for fine-tuning: the head trains at the
            optimizer's lr, each block below at ``layer_decay`` times the one above (None: off; 0.75-0.9
            is usual).
        warmup_steps: optimizer steps of linear warm-up.
        min_lr_ratio: final learning rate as a fraction of the peak, reached at the last step.
        label_smoothing: spread over all classes, also inside mixed targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables the method.
        mix_prob: probability that a training batch is mixed at all.
        switch_prob: probability of CutMix instead of Mixup when both are enabled.
        compile: compile the network in place with ``torch.compile`` (parameter names, hence
            checkpoints, stay those of the plain model).
        compile_options: keyword arguments for ``torch.compile`` (``mode``, ``backend``, ...).
        channels_last: keep the network and its input batches in channels-last memory format.
        grad_checkpointing: recompute block activations in the backward pass (less memory, about
            a third more compute); for batches or variants that do not fit otherwise. True for all
            stages, or the stage indices to recompute, e.g. ``[0, 1]`` for the MBConv stages S1-S2.
        init_from: weights to fine-tune from (a ``python -m coatnet convert`` file, a checkpoint of
            this project, or a timm CoAtNet state dict). Relative-position tables are resized to
            ``image_size`` and the classifier is re-initialised when ``num_classes`` differs.
    """

    def __init__(
        self,
        model_name: str = "coatnet_0",
        num_classes: int = 1000,
        image_size: tuple[int, int] = (224, 224),
        model_overrides: CoAtNetOverrides | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        layer_decay: DecayFactor | None = None,
        warmup_steps: NonNegativeInt = 0,
        min_lr_ratio: Fraction = 0.0,
        label_smoothing: ProperFraction = 0.1,
        mixup_alpha: NonNegativeFloat = 0.0,
        cutmix_alpha: NonNegativeFloat = 0.0,
        mix_prob: Fraction = 1.0,
        switch_prob: Fraction = 0.5,
        compile: bool = False,
        compile_options: dict[str, Any] | None = None,
        channels_last: bool = False,
        grad_checkpointing: bool | list[int] = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        check_ranges(ImageClassifier.__init__, locals())  # the CLI's parser checks them too; Python callers skip it
        if num_classes < 2:  # linked from the DataModule, so no parser sees it
            raise ValueError(f"num_classes={num_classes} is out of range: allowed >= 2 (data.init_args.num_classes)")
        # The optimizer is left out so that checkpoints hold only plain values and load with
        # ``weights_only=True``; the config saved next to the logs records it.
        self.save_hyperparameters(ignore=["optimizer"])
        self.hparams["model_overrides"] = overrides_dict(model_overrides)
        self.optimizer_factory = SharedOnCopy(optimizer)  # EMA's copy of this module shares it
        self.image_size = tuple(image_size)
        self.model = self.build_model()
        # Decided now, before any strategy wraps or shards the network.
        self.no_decay = no_decay_names(self.model, getattr(self.model, "no_weight_decay", set)())
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mixer = MixupCutmix(
            num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mix_prob=mix_prob,
            switch_prob=switch_prob,
            label_smoothing=label_smoothing,
        )
        self.top_k = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
        self._compiled = False
        self._predict_model: nn.Module | None = None

    def build_model(self, load_weights: bool = True) -> nn.Module:
        """Create the network from the hyper-parameters, then load ``init_from`` unless ``load_weights`` is False
        (a meta-device copy for FLOP counting needs no weights)."""
        hp = self.hparams
        model = CoAtNet(network_config(hp))
        if load_weights:  # here, not in setup(): callbacks such as EMA copy the weights in their own setup first
            load_init_from(model, hp.init_from)
        model.set_grad_checkpointing(hp.grad_checkpointing)
        return model

    def setup(self, stage: str) -> None:
        """Compile here, after callbacks such as EMA have copied the plain module in their own ``setup``."""
        if self.hparams.compile and not self._compiled:
            self.model.compile(**(self.hparams.compile_options or {}))
            self._compiled = True

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self._input_layout(images))

    def _input_layout(self, images: Tensor) -> Tensor:
        """One memory layout for every batch (train crops arrive channels-last, eval batches not): no recompiles."""
        layout = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=layout)

    def on_predict_start(self) -> None:
        """Predict with BatchNorm folded into the adjacent layers (``coatnet.fold_batchnorm``): the same outputs up
        to float rounding, with fewer passes over the activations (1.05-1.2x on a CPU). The trained network is
        left as it is, so training or validating after ``predict`` sees its BatchNorms. Sharded strategies (FSDP)
        predict with the network as it is: their blocks hold shards, not whole weights."""
        if not isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            return
        folded = fold_batchnorm(self.model)
        if self.hparams.channels_last:
            folded = folded.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            folded.compile(**(self.hparams.compile_options or {}))
        object.__setattr__(self, "_predict_model", folded)  # not a submodule: no second copy in state_dict()

    def on_predict_end(self) -> None:
        self._predict_model = None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = split_batch(batch)
        mixed = self.mixer(images, labels)
        logits = self(mixed.images)
        loss = F.cross_entropy(logits, mixed.targets)
        # Step metrics logged on other steps are never written, yet each self.log costs host time
        # (Lightning moves its result record to the device on every call).
        if loggers_write_after(self.trainer, self.trainer.global_step + 1):
            self._log_training_step(loss, logits, labels)
        return loss

    def _log_training_step(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Loss and hard-label accuracy of this step, without reading the device on the host: train/loss is no
        progress-bar metric (LoggedLossProgressBar shows it)."""
        self.train_acc1(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("train/acc1", self.train_acc1, on_step=True, on_epoch=False)

    def _evaluate(self, batch: Any, stage: str, acc1: MulticlassAccuracy, acc5: MulticlassAccuracy) -> Tensor:
        images, labels = split_batch(batch)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        acc1(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=True)
        self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=True)
        if self.hparams.num_classes > 5:
            acc5(logits, labels)
            self.log(f"{stage}/acc5", acc5, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_acc1, self.val_acc5)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_acc1, self.test_acc5)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Top-k (k = min(5, classes)) softmax probabilities and class indices per image."""
        images, _ = split_batch(batch)
        folded = self._predict_model  # from on_predict_start
        network = self.model if folded is None else folded
        probs = network(self._input_layout(images)).float().softmax(dim=-1)
        top_probs, top_classes = probs.topk(self.top_k, dim=-1)
        return {"probs": top_probs, "classes": top_classes}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store class names and eval preprocessing next to the weights, for predict and export."""
        store_data_info(checkpoint, self._trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse the weights of another network, even one with the same parameter shapes (see ``network_match``)."""
        check_checkpoint(checkpoint, self.model.config, self.hparams, self._trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.layer_decay is None:
            groups = weight_decay_groups(self.model, self.no_decay)
        else:
            groups = layer_decay_groups(self.model, self.no_decay, self.model.config.depths, hp.layer_decay)
        optimizer = self.optimizer_factory(groups)
        check_clipping_is_possible(self.trainer, optimizer)
        scheduler = warmup_cosine_scheduler(optimizer, self.trainer, hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
