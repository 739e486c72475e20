"""Pictures of a run: what the model sees, what it gets wrong, and what attention learned.

Pictures (all images are uint8 CHW):
``train_batch`` (first training batch of a fit, after augmentation, before Mixup/CutMix),
``val_predictions``, ``confusion_matrix`` (a top-confusions table beyond ``max_matrix_classes``),
``rel_pos_bias/stage{i}`` (i = the paper's stage number, S3/S4 in C-C-T-T), ``attention/stage{i}``
(where the centre query of the last attention layer of stage S*i* looks, per head, for the first
validation images). TensorBoard, W&B and MLflow get each through their own image call as ``pictures/<name>``;
every other logger with a local folder as ``<log_dir>/pictures/<name>/step_<global step>.png`` (see
``destinations``). Also scalars
``val_class_acc/<class name>`` (up to ``max_matrix_classes`` classes, to every logger), and
TensorBoard's HParams tab (hyper-parameters with the best/final validation metrics) at the end of a fit.

Validation logits are caught with a forward hook on the LightningModule, so nothing runs twice. They
feed a torchmetrics ``MulticlassConfusionMatrix`` (``confusion``) that stays on the device during the
epoch and is summed over DDP ranks once, at its end.
Attention maps come from forward pre-hooks on the attention layers that live for the first
validation batch only; on a network compiled before they were added they do not fire, and the
attention pictures are skipped.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from coatnet.blocks import RelativeAttention
from lightning_modules.hparam_ranges import PositiveInt, check_ranges
from lightning_modules.pictures.attention_maps import centre_query, query_attention
from lightning_modules.pictures.destinations import keeps_pictures, log_picture
from lightning_modules.pictures.drawing import (
    attention_rows,
    confusion_image,
    head_maps,
    prediction_grid,
    top_confusions_table,
    upscale,
)
from lightning_modules.steps import split_batch

FINAL_METRICS = ("val/acc1", "val/acc5", "val/loss")
MIN_TILE_SIDE = 64  # small (CIFAR-sized) images are enlarged, pixel-exact, to stay readable
ATTENTION_IMAGES = 4  # validation images with attention maps (a row of heads each)


def class_names(trainer: Trainer, num_classes: int) -> list[str]:
    """The DataModule's ``class_names`` when it has the right count, else "0", "1", ..."""
    names = getattr(trainer.datamodule, "class_names", None)
    return (
        [str(n) for n in names]
        if names is not None and len(names) == num_classes
        else [str(i) for i in range(num_classes)]
    )


def to_unit_range(trainer: Trainer, images: Tensor) -> Tensor:
    """Normalised model inputs back to [0, 1] via the DataModule's ``denormalize`` (min-max otherwise)."""
    denormalize = getattr(trainer.datamodule, "denormalize", None)
    if denormalize is not None:
        return denormalize(images.detach()).float().cpu()
    flat = images.detach().float().flatten(1)
    low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return ((images.detach().float() - low) / (high - low).clamp(min=1e-8)).cpu()


def attention_stages(model: torch.nn.Module) -> dict[int, list[RelativeAttention]]:
    """Relative-attention layers of each stage, keyed by the paper's stage number (S1 = ``stages[0]``)."""
    found: dict[int, list[RelativeAttention]] = {}
    for index, stage in enumerate(getattr(model, "stages", [])):
        layers = [m for m in stage.modules() if isinstance(m, RelativeAttention)]
        if layers:
            found[index + 1] = layers
    return found


class RunPictures(Callback):
    """Logs the pictures listed in the module docstring to every logger; each kind can be switched off.

    Args:
        train_batch: grid of the first training batch of each fit.
        val_predictions: grid of the first validation images with predicted / true labels.
        confusion_matrix: confusion matrix (or top-confusions table) at each validation end.
        class_accuracy: per-class validation accuracy scalars.
        rel_pos_bias: relative-position bias maps of every attention stage at each validation end.
        attention_maps: per attention stage, the attention weights of the centre query over all keys,
            one map per head, for the first ``ATTENTION_IMAGES`` validation images. The stage's last
            attention layer is shown: it works on the most processed tokens, right before the next
            stage or the head.
        hparams: hyper-parameters with final metrics for TensorBoard's HParams tab (TensorBoard only). TensorBoard
            keeps the first HParams session of a run, so the logger needs ``default_hp_metric: false``
            (``configs/defaults.yaml`` sets it), or its placeholder ``hp_metric = -1`` hides these metrics.
        max_images: images in the training and validation grids.
        max_matrix_classes: above this many classes a top-confusions table replaces the matrix
            and per-class scalars are skipped.
    """

    def __init__(
        self,
        train_batch: bool = True,
        val_predictions: bool = True,
        confusion_matrix: bool = True,
        class_accuracy: bool = True,
        rel_pos_bias: bool = True,
        attention_maps: bool = True,
        hparams: bool = True,
        max_images: PositiveInt = 32,
        max_matrix_classes: int = 100,
    ) -> None:
        check_ranges(RunPictures.__init__, locals())  # the CLI's parser checks them too (pictures.max_images)
        self.train_batch, self.val_predictions, self.confusion_matrix = train_batch, val_predictions, confusion_matrix
        self.class_accuracy, self.rel_pos_bias, self.hparams = class_accuracy, rel_pos_bias, hparams
        self.attention_maps = attention_maps
        self.max_images, self.max_matrix_classes = max_images, max_matrix_classes
        self._train_logged = False
        self._hook: RemovableHandle | None = None
        self._collecting = False
        self._logits: Tensor | None = None
        self.confusion: MulticlassConfusionMatrix | None = None  # rows: true class, columns: predicted
        self._samples: tuple[Tensor, Tensor, Tensor] | None = None
        self._best: dict[str, float] = {}
        self._attention_hooks: list[RemovableHandle] = []
        self._attention: dict[int, tuple[Tensor, tuple[int, int], int]] = {}  # stage -> (weights, grid, query)
        self._attention_images: Tensor | None = None

    @property
    def _needs_logits(self) -> bool:
        return self.val_predictions or self.confusion_matrix or self.class_accuracy

    @property
    def state_key(self) -> str:
        """The key of this callback's checkpointed state under its former name, so older checkpoints keep their
        best values."""
        return "TensorBoardPictures"

    @staticmethod
    def _tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    @staticmethod
    def _drawing(trainer: Trainer) -> bool:
        return trainer.is_global_zero and any(keeps_pictures(lg) for lg in trainer.loggers)

    def _add_image(self, trainer: Trainer, name: str, image: Tensor) -> None:
        if trainer.is_global_zero:
            log_picture(trainer.loggers, name, image, trainer.global_step)

    # ------------------------------------------------------------------ training
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # before a resumed fit restores the best values (load_state_dict)
            self._train_logged, self._best = False, {}
        if stage == "fit" and not any(keeps_pictures(lg) for lg in trainer.loggers):
            rank_zero_warn(
                "pictures: no logger keeps images (TensorBoard, W&B, MLflow, or one with a log_dir), nothing is drawn."
            )
        if self._needs_logits and self._hook is None:
            # On the LightningModule, outside a compiled ``model``: registered once, so no recompilation.
            self._hook = pl_module.register_forward_hook(self._catch_logits)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._remove_attention_hooks()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.train_batch or self._train_logged:
            return
        self._train_logged = True
        images = to_unit_range(trainer, split_batch(batch)[0][: self.max_images])
        tiles = upscale((images * 255).round().to(torch.uint8), MIN_TILE_SIDE)
        self._add_image(trainer, "train_batch", make_grid(tiles, nrow=8, padding=2, pad_value=255))

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.attention_maps and not trainer.sanity_checking and self._drawing(trainer):
            self._add_attention_hooks(pl_module)
        self._collecting = self._hook is not None and not trainer.sanity_checking
        if self._collecting:
            # validate_args=False: the argument checks read values back on the host, once per batch.
            classes = pl_module.hparams.num_classes
            self.confusion = MulticlassConfusionMatrix(classes, validate_args=False).to(pl_module.device)
            self._samples, self._logits = None, None

    def _catch_logits(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        # Under DDP the strategy also calls the module to run validation_step: that call returns
        # the loss, not (B, classes) logits, and is ignored.
        if self._collecting and isinstance(output, Tensor) and output.ndim == 2:
            self._logits = output.detach()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._attention_hooks:
            self._remove_attention_hooks()
            if self._attention:
                self._attention_images = to_unit_range(trainer, split_batch(batch)[0][:ATTENTION_IMAGES])
        if not self._collecting or self._logits is None:
            return
        images, labels = split_batch(batch)
        logits, self._logits = self._logits.float(), None
        preds = logits.argmax(dim=1)
        self.confusion.update(preds, labels)
        if self._samples is None and self.val_predictions:
            keep = slice(0, self.max_images)
            probs = logits[keep].softmax(dim=1).amax(dim=1)
            self._samples = (to_unit_range(trainer, images[keep]), preds[keep].cpu(), probs.cpu(), labels[keep].cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._collecting:
            return
        self._collecting = False
        classes = pl_module.hparams.num_classes
        matrix = self.confusion.compute().cpu()  # summed over DDP ranks: a collective that every rank joins
        names = class_names(trainer, classes)
        if self._samples is not None:
            self._add_image(trainer, "val_predictions", prediction_grid(*self._samples, names))
        if self.confusion_matrix:
            small = classes <= self.max_matrix_classes
            image = confusion_image(matrix, names) if small else top_confusions_table(matrix, names)
            self._add_image(trainer, "confusion_matrix", image)
        if self.class_accuracy and classes <= self.max_matrix_classes:
            # The matrix was summed across ranks, so the values are final on every rank. Lightning warns
            # under DDP about epoch-level values logged without sync_dist=True; with rank_zero_only=True
            # that flag runs no collective (without it, one all-reduce per class).
            totals = matrix.sum(dim=1)
            for i in totals.nonzero().flatten().tolist():
                accuracy = matrix[i, i].item() / totals[i].item()
                pl_module.log(f"val_class_acc/{names[i]}", accuracy, sync_dist=True, rank_zero_only=True)
        self._samples = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.rel_pos_bias:
            for stage, layers in attention_stages(pl_module.model).items():
                with torch.no_grad():
                    tables = [layer.rel_pos.bias_table() for layer in layers]
                image = head_maps(tables, layers[0].rel_pos.grid)
                self._add_image(trainer, f"rel_pos_bias/stage{stage}", image)
        self._log_attention(trainer)
        self._track_best(trainer)

    # ----------------------------------------------------------- attention maps
    def _add_attention_hooks(self, pl_module: LightningModule) -> None:
        """Pre-hooks on the last attention layer of each stage, removed after the first validation batch."""
        self._remove_attention_hooks()
        self._attention, self._attention_images = {}, None
        for stage, layers in attention_stages(pl_module.model).items():
            hook = torch.compiler.disable(partial(self._catch_attention, stage))  # eager even if Dynamo traces it
            self._attention_hooks.append(layers[-1].register_forward_pre_hook(hook))

    def _catch_attention(self, stage: int, module: RelativeAttention, inputs: tuple[Tensor, ...]) -> None:
        """Compute the weights right away, inside the layer's forward: only the small (images, heads, N)
        result is kept, and sharded (FSDP) parameters are gathered at that moment."""
        query = centre_query(module.rel_pos.grid)
        weights = query_attention(module, inputs[0][:ATTENTION_IMAGES].detach(), query)
        self._attention[stage] = (weights, module.rel_pos.grid, query)

    def _remove_attention_hooks(self) -> None:
        for handle in self._attention_hooks:
            handle.remove()
        self._attention_hooks = []

    def _log_attention(self, trainer: Trainer) -> None:
        """Draw what the hooks caught; nothing when they did not fire (compiled network, no attention)."""
        self._remove_attention_hooks()  # a validation run without batches leaves them registered
        if self._attention_images is not None:
            for stage, (weights, grid, query) in self._attention.items():
                image = attention_rows(self._attention_images, weights, grid, query, MIN_TILE_SIDE)
                self._add_image(trainer, f"attention/stage{stage}", image)
        self._attention, self._attention_images = {}, None

    # ------------------------------------------------------------------- hparams
    def _track_best(self, trainer: Trainer) -> None:
        """Keep the final and best value of each ``FINAL_METRICS`` entry seen at validation ends."""
        for name in FINAL_METRICS:
            if name not in trainer.callback_metrics:
                continue
            value, short = float(trainer.callback_metrics[name]), name.split("/")[1]
            best = self._best.get(f"hp/best_{short}", value)
            self._best[f"hp/best_{short}"] = min(best, value) if short == "loss" else max(best, value)
            self._best[f"hp/final_{short}"] = value

    def state_dict(self) -> dict[str, Any]:
        """The best values so far, so that a resumed run's ``hp/best_*`` covers the epochs before the resume."""
        return {"best": dict(self._best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best = dict(state_dict.get("best", {}))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = self._tensorboard(trainer)
        if self.hparams and logger is not None and self._best:
            logger.log_hyperparams(dict(pl_module.hparams), metrics=self._best)
