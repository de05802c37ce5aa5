"""MoCo v3 (Chen, Xie & He 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/mocov3.py --workdir runs/mocov3             # embedded MNIST
python -m jssl.main --config configs/mocov3.py:smoke --workdir /tmp/mocov3       # seconds
python -m jssl.main --config configs/mocov3.py:cifar10 --workdir runs/mocov3_c10 # paper setting
python -m jssl.main --config configs/mocov3.py:cifar10_vit --workdir runs/mocov3_vit  # ViT recipe
python -m jssl.main --config configs/mocov3.py:vit --workdir runs/mocov3_vit  # ViT-Tiny/7, MNIST

The ViT recipe (MoCo v3's paper, section 4 and appendix): ViT-Small, AdamW with lr
1.5e-4 x batch / 256 and weight decay 0.1, a 40-epoch warm-up then cosine, the random patch
embedding frozen (`model.freeze_patch_embed`), T = 0.2, momentum 0.99 -> 1 (cosine), a
3-layer 4096-wide projector and a 2-layer predictor to 256 with BatchNorm; here on CIFAR-10
with 4 px patches (32 px images) and 300 epochs. `smoke_vit` runs it in seconds.
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
# The "vit" row: the ViT recipe on ViT-Tiny/7 (preset "vit").
ZOO = {"reference": 93.1, "presets": {"vit": {"note": "ViT-Tiny/7"}}}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "mocov3"
    c.loss.temperature = 0.2
    # solo-learn cifar/mocov3.yaml: projector 4096 -> 256, predictor 4096 -> 256.
    c.model.projector_hidden_dims = (4096,)
    c.model.projector_dim = 256
    c.model.projector_last_bn = True
    c.model.predictor_hidden_dims = (4096,)
    c.model.predictor_dim = 256
    c.ema.base_momentum = 0.99
    c.ema.final_momentum = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = c.model.predictor_hidden_dims = (512,)
        c.model.projector_dim = c.model.predictor_dim = 128
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.predictor_hidden_dims = (32,)
        c.model.predictor_dim = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
    elif preset == "vit":
        # The zoo's ViT row: the embedded default on ViT-Tiny/7 (4 x 4 patches of a 28 px digit: a
        # third of the cost of 7 x 7 on 2 CPU cores) with the ViT recipe (AdamW, wd 0.1, frozen
        # patch embedding, T = 0.2); the learning rate is higher than the paper's for a run of
        # hundreds of steps (our choice, as the MAE default's).
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = c.model.predictor_hidden_dims = (512,)
        c.model.projector_dim = c.model.predictor_dim = 128
        c.model.backbone, c.model.patch_size, c.model.pool = "vit_tiny", 7, "token"
        c.model.freeze_patch_embed = True
        c.optimizer.name = "adamw"
        c.optimizer.lr = 2e-3
        c.optimizer.weight_decay = 0.1
    elif preset in ("cifar10_vit", "smoke_vit"):
        if preset == "cifar10_vit":
            jc.cifar10_preset(c, epochs=300)
            jc.solo_cifar_augment(c, "asymmetric")
            c.model.backbone = "vit_small"
            c.optimizer.warmup_steps = 40 * (50000 // 256)
        else:
            jc.smoke_preset(c)
            c.model.backbone = "vit_smoke"
            c.model.predictor_hidden_dims = (32,)
            c.model.predictor_dim = 16
        c.model.patch_size, c.model.pool = 4, "token"
        c.model.freeze_patch_embed = True
        if preset == "cifar10_vit":
            c.model.projector_hidden_dims = (4096, 4096)
        c.optimizer.name = "adamw"
        c.optimizer.lr = 1.5e-4
        c.optimizer.weight_decay = 0.1
    elif preset in ("imagenet", "imagenette"):
        # facebookresearch/moco-v3 CONFIG.md, ResNet-50 100 epochs (68.9%): batch 4096, LARS
        # lr 0.6 x batch / 256, weight decay 1e-6, m 0.99 -> 1 (cosine), T = 1.0, crops of
        # scale 0.2-1, projector 4096 -> 256 (affine-free output BN), predictor 4096 -> 256.
        jc.resnet50_preset(c, preset, batch_size=4096, epochs=100)
        jc.imagenet_views(c, "asymmetric", crop_scale=(0.2, 1.0))
        c.loss.temperature = 1.0
        c.optimizer.lr, c.optimizer.weight_decay = 0.6, 1e-6
    else:
        raise jc.unknown_preset(
            "configs/mocov3.py",
            preset,
            ("smoke", "cifar10", "vit", "cifar10_vit", "smoke_vit", "imagenet", "imagenette"),
        )
    return c
