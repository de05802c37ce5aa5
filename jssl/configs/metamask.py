"""MetaMask (Li et al., NeurIPS 2022): Barlow Twins + 10 x NT-Xent on features masked by a
meta-learned M = sigmoid(m) (jssl/methods/metamask.py, docs/methods.md section 3).

  # embedded MNIST
  python -m jssl.main --config configs/metamask.py --workdir runs/metamask
  python -m jssl.main --config configs/metamask.py:smoke --workdir /tmp/metamask       # seconds
  # official setting
  python -m jssl.main --config configs/metamask.py:cifar10 --workdir runs/metamask_c10
  python -m jssl.main --config configs/metamask.py:compare --workdir runs/metamask_cmp
      # MetaMask vs the pretext alone vs a random mask, tuned on validation, 5 seeds
      # (jssl/studies/metamask.py, docs/metamask.md); compare_smoke: the same in seconds
  --config.metamask.mode=exact|first_order|finite_difference   --config.metamask.enabled=False
  --config.metamask.learn=False --config.metamask.init_std=S  (a fixed random mask)
"""

import ml_collections

from jssl import config as jc
from jssl.methods.metamask import metamask_config


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "metamask"
    c.metamask = metamask_config()
    # L = L_BT + 10 * L_NTXent(T = 0.07) (official code: --weight-cl 10, --temperature 0.07);
    # its Barlow Twins loss standardises with the unbiased std and no eps, lambda 5e-3.
    c.loss.name = "barlow_twins+nt_xent"
    c.loss.lambd = 5e-3
    c.loss.scale = 1.0
    c.loss.unbiased = True
    c.loss.eps = 0.0
    c.loss.temperature = 0.07
    c.loss.contrastive_weight = 10.0
    # Heads of the official code (lightly's projection MLPs, BN after every layer): Barlow
    # Twins 512-2048-2048-2048, contrastive 512-2048-256.
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 2048
    c.model.projector_bn = True
    c.model.projector_last_bn = True
    c.model.contrastive_hidden_dims = (2048,)
    c.model.contrastive_dim = 256
    # Official optimizer for the network: SGD lr 1e-3 (unscaled), momentum 0.9, wd 5e-4 on
    # every parameter (torch SGD), cosine annealing, no warm-up.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 1e-3
    c.optimizer.scale_lr_with_batch = False
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.exclude_bias_and_norm = False
    c.optimizer.schedule = "cosine"

    if preset in ("", "compare"):
        jc.embedded_preset(c)
        c.optimizer.warmup_steps = 0
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = 512
        c.model.contrastive_hidden_dims = (512,)
        c.model.contrastive_dim = 128
    elif preset in ("smoke", "compare_smoke"):
        jc.smoke_preset(c)
        c.model.projector_hidden_dims = (32,)
        c.model.projector_dim = 16
        c.model.contrastive_hidden_dims = (32,)
        c.model.contrastive_dim = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c, epochs=800)
        jc.solo_cifar_augment(c, "symmetric")  # the SimCLR augmentations (official: no blur)
        c.batch_size = 512
        steps_per_epoch = 50000 // 512
        c.total_steps = 800 * steps_per_epoch
        c.optimizer.warmup_steps = 0
        c.checkpoint_every = 10 * steps_per_epoch
        c.eval_every = 50 * steps_per_epoch
    else:
        raise jc.unknown_preset(
            "configs/metamask.py", preset, ("smoke", "cifar10", "compare", "compare_smoke")
        )
    # The official monitor: weighted k-NN, k = 5, temperature 1.0, on masked features.
    c.eval.knn_k = 5
    c.eval.knn_temperature = 1.0
    if preset == "compare":
        # The study's scale (docs/metamask.md): the colour digits, where a few points mean
        # something, and a network small enough for 5 seeds x 3 arms plus the tuning runs
        # in well under an hour on 2 CPU cores (exact hypergradients throughout).
        jc.mnistm_preset(c)
        c.model.backbone = "convnet"
        c.model.num_filters = 32
        c.total_steps = 100
        c.checkpoint_every = 50
    if preset.startswith("compare"):
        # jssl/studies/metamask.py: MetaMask vs the pretext alone vs a random mask
        c.study = "metamask"
        full = preset == "compare"
        c.compare = ml_collections.ConfigDict(
            dict(
                seeds=(0, 1, 2, 3, 4) if full else (0,),
                tune_seed=100,  # the tuning runs' seed, outside `seeds`
                # Grids of the same size (docs/studies.md rule 3), chosen by the k-NN on
                # validation: the pretext's network lr, then MetaMask's mask lr at it.
                network_lrs=(1e-4, 3e-4, 1e-3) if full else (1e-3,),
                mask_lrs=(0.1, 1.0, 10.0) if full else (1.0,),
                # The manipulation check: std / mean of M over dimensions at the end.
                min_relative_spread=0.05,
            )
        )
        c.eval.random_init_baseline = False
        if preset == "compare_smoke":
            c.total_steps = 4
    return c
