"""MAE (He et al. 2022): masked-image modelling on a ViT (jssl/methods/mae.py).

python -m jssl.main --config configs/mae.py --workdir runs/mae            # embedded MNIST
python -m jssl.main --config configs/mae.py:smoke --workdir /tmp/mae      # seconds
python -m jssl.main --config configs/mae.py:cifar10 --workdir runs/mae_c10
python -m jssl.main --config configs/mae.py:imagenet --workdir gs://b/mae_vitb16  # the paper's

The paper's recipe: mask ratio 0.75, per-patch normalised pixel targets, a decoder of 8
blocks 512 wide, AdamW (beta2 0.95) with lr 1.5e-4 x batch / 256, weight decay 0.05, a
40-epoch warm-up then cosine, random resized crops (scale 0.2-1) and flips only.
`imagenet`: ViT-B/16 at 224 px, batch 4096, 800 epochs (the paper's main ablation length),
ImageNet-1k from TFDS (imagenet2012, which needs the variable-size JPEG input of issue 18);
fine-tune the result with configs/finetune.py:imagenet_mae.
"""

from jssl import config as jc
from jssl.methods.mae import mae_config

# The pretext zoo (jssl.config.zoo): the default is ViT-Tiny/4 on the embedded digits.
# solo-learn publishes no MAE result on CIFAR-10: no reference column.
ZOO = {"note": "ViT-Tiny/4"}


def _view(size, mean, std, flip):
    return jc.crop_view(size, mean, std, flip=flip, scale=(0.2, 1.0))


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "mae"
    c.mae = mae_config()
    c.model.projector_hidden_dims, c.model.projector_dim = (), 0
    c.model.pool = "token"
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1.5e-4  # for a batch of 256, scaled linearly
    c.optimizer.weight_decay = 0.05
    c.optimizer.b2 = 0.95
    c.optimizer.exclude_bias_and_norm = True

    if preset in ("", "smoke"):
        jc.embedded_preset(c)
        mean, std = c.augment.view1.mean, c.augment.view1.std
        c.model.backbone, c.model.patch_size = "vit_tiny", 4  # 28 px: 7 x 7 patches
        c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 128, 2, 4
        c.optimizer.lr = 1.5e-3  # 500 steps instead of the paper's ~250k
        c.optimizer.warmup_steps = 25
        jc.one_view(c, _view(28, mean, std, flip=0.0))  # digits are not flip-invariant
        if preset == "smoke":
            jc.smoke_preset(c)
            c.model.backbone, c.model.patch_size = "vit_smoke", 4
            c.model.projector_hidden_dims, c.model.projector_dim = (), 0
            c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 32, 1, 2
            jc.one_view(c, _view(16, mean, std, flip=0.0))
    elif preset == "cifar10":
        jc.cifar10_preset(c, epochs=800)
        c.model.backbone, c.model.patch_size = "vit_small", 4  # 32 px: 8 x 8 patches
        c.optimizer.warmup_steps = 40 * (50000 // 256)
        jc.one_view(c, _view(32, c.augment.view1.mean, c.augment.view1.std, flip=0.5))
    elif preset == "imagenet":
        steps_per_epoch = jc.imagenet_preset(c, batch_size=4096, epochs=800)
        c.model.backbone, c.model.patch_size = "vit_base", 16
        c.optimizer.warmup_steps = 40 * steps_per_epoch
        c.checkpoint_every = 10 * steps_per_epoch
        jc.one_view(c, _view(224, jc.IMAGENET_MEAN, jc.IMAGENET_STD, flip=0.5))
    else:
        raise jc.unknown_preset("configs/mae.py", preset, ("smoke", "cifar10", "imagenet"))
    return c
