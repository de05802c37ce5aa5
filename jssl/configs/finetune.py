"""Full fine-tuning of a pretrained encoder on labelled data (jssl/methods/finetune.py).

python -m jssl.main --config configs/finetune.py --workdir runs/ft \
    --config.model.init_from=runs/simclr          # a zoo run's ResNet-18 (width 16), MNIST
python -m jssl.main --config configs/finetune.py:vit --workdir runs/ft_mae \
    --config.model.init_from=runs/mae             # a ViT-Tiny/4 run (mae, dino:vit, ...)
python -m jssl.main --config configs/finetune.py:smoke --workdir /tmp/ft   # seconds
python -m jssl.main --config configs/finetune.py:imagenet_mae --workdir gs://b/ft \
    --config.model.init_from=gs://b/mae_vitb16    # MAE's ViT-B/16 protocol

Without `model.init_from` the run trains the same network from random initialisation (the
supervised baseline). The backbone fields (model.backbone, num_filters, stem, patch_size,
pool) must be those of the run that `init_from` names; a mismatch is one line naming the
first differing parameter. `finetune.labelled_fraction` takes a seeded class-balanced
subset of the labels (`finetune.subset_seed`).

MAE's fine-tuning recipe (He et al. 2022, appendix A.1; `imagenet_mae`): AdamW, base lr
5e-4 x batch / 256, weight decay 0.05, betas (0.9, 0.999), layer-wise lr decay 0.65,
5 warm-up epochs then cosine over 100 epochs at batch 1024, drop path 0.1, label smoothing
0.1, Mixup 0.8, CutMix 1.0 (switch probability 0.5). jssl has no RandAugment: the training
view is a random resized crop (scale 0.08-1) and a flip.
"""

from jssl import config as jc
from jssl.methods.finetune import finetune_config


def _view(size, mean, std, *, flip, scale=(0.08, 1.0)):
    return jc.crop_view(size, mean, std, flip=flip, scale=scale)


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "finetune"
    c.finetune = finetune_config()
    c.loss.name = "cross_entropy"
    c.model.projector_hidden_dims, c.model.projector_dim = (), 0
    c.optimizer.name = "adamw"
    c.optimizer.lr = 5e-4  # for a batch of 256, scaled linearly (MAE's base lr)
    c.optimizer.weight_decay = 0.05
    c.optimizer.b2 = 0.999

    if preset in ("", "vit", "smoke"):
        # The embedded digits, 10% of the training labels; the encoder of a zoo run:
        # ResNet-18 width 16 ("") or ViT-Tiny/4 ("vit": layer decay 0.65, drop path 0.1).
        jc.embedded_preset(c)
        c.model.projector_hidden_dims, c.model.projector_dim = (), 0
        c.finetune.labelled_fraction = 0.1
        c.total_steps = 300
        c.optimizer.lr = 2e-3  # a few hundred steps instead of MAE's 100 epochs
        c.optimizer.warmup_steps = 15
        mean, std = c.augment.view1.mean, c.augment.view1.std
        jc.one_view(c, _view(28, mean, std, flip=0.0, scale=(0.25, 1.0)))  # digits
        if preset == "vit":
            c.model.backbone, c.model.patch_size, c.model.pool = "vit_tiny", 4, "token"
            c.model.drop_path = 0.1
            c.finetune.layer_decay = 0.65
        elif preset == "smoke":
            jc.smoke_preset(c)
            c.model.projector_hidden_dims, c.model.projector_dim = (), 0
            c.finetune.labelled_fraction = 0.5
            c.finetune.mixup_alpha, c.finetune.cutmix_alpha = 0.8, 1.0  # exercised
            jc.one_view(c, _view(16, mean, std, flip=0.0, scale=(0.25, 1.0)))
    elif preset == "cifar10":
        jc.cifar10_preset(c, epochs=100)
        c.optimizer.warmup_steps = 5 * (50000 // 256)
        c.finetune.mixup_alpha, c.finetune.cutmix_alpha = 0.8, 1.0
        jc.one_view(c, _view(32, jc.CIFAR_MEAN, jc.CIFAR_STD, flip=0.5))
    elif preset == "imagenet_mae":
        steps_per_epoch = jc.imagenet_preset(c, batch_size=1024, epochs=100)
        c.model.backbone, c.model.patch_size, c.model.pool = "vit_base", 16, "token"
        c.model.drop_path = 0.1
        c.optimizer.warmup_steps = 5 * steps_per_epoch
        c.finetune.layer_decay = 0.65
        c.finetune.mixup_alpha, c.finetune.cutmix_alpha = 0.8, 1.0
        jc.one_view(c, _view(224, jc.IMAGENET_MEAN, jc.IMAGENET_STD, flip=0.5))
    else:
        raise jc.unknown_preset(
            "configs/finetune.py", preset, ("smoke", "vit", "cifar10", "imagenet_mae")
        )
    # Labels train the classifier: train on the training split only, so that the
    # validation split stays unseen for model selection.
    c.data.train_split = c.eval.train_split
    return c
