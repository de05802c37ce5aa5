"""Functional Knowledge Transfer (Chhipa et al. 2023): SimCLR and supervised cross-entropy
optimised jointly through one backbone (jssl/methods/joint.py, docs/methods.md section 2).

  python -m jssl.main --config configs/fkt.py --workdir runs/fkt             # embedded MNIST
  python -m jssl.main --config configs/fkt.py:smoke --workdir /tmp/fkt       # seconds
  python -m jssl.main --config configs/fkt.py:cifar10 --workdir runs/fkt_c10 # paper setting
  python -m jssl.main --config configs/fkt.py:compare --workdir runs/fkt_compare
      # functional (at equal updates and at equal image passes) vs representational vs
      # supervised, 1% and 100% labels, each arm tuned on validation, 5 seeds
      # (jssl/studies/fkt.py, docs/fkt.md); compare_smoke: the same in seconds
  --config.joint.labelled_fraction=0.01|0.1|1.0   --config.joint.ssl_weight=0 (supervised only)
"""

import ml_collections

from jssl import config as jc
from jssl.methods.joint import joint_config


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "joint"
    c.joint = joint_config()
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.5  # the paper
    c.loss.normalize = True  # False: the official code's raw projections
    # The paper's projector 512-1024-128 (on ResNet-18's 512 features), no BatchNorm.
    c.model.projector_hidden_dims = (1024,)
    c.model.projector_dim = 128
    c.model.projector_bn = False
    # The official code: SGD lr 2.5e-4, momentum 0.9, wd 1e-6, batch 256, from ImageNet
    # weights. From scratch (our presets) that lr barely moves a network: 0.1 is our choice.
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 5e-4

    if preset == "":
        jc.embedded_preset(c)
        c.joint.labelled_fraction = 0.1
        c.model.projector_hidden_dims = (512,)
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.joint.labelled_fraction = 0.1
        c.joint.labelled_batch_size = 16
    elif preset in ("compare", "compare_smoke"):
        full = preset == "compare"
        if full:
            # The study's scale (docs/fkt.md): the colour digits, a network small enough
            # for 5 seeds x 4 arms x 2 fractions plus the tuning runs on 2 CPU cores.
            jc.embedded_preset(c)
            jc.mnistm_preset(c)
            c.model.backbone = "convnet"
            c.model.num_filters = 32
            c.model.projector_hidden_dims = (512,)
            c.total_steps = 100  # N: pretraining and fine-tuning take N steps each
            c.checkpoint_every = 100
            c.log_every = 50
        else:
            jc.smoke_preset(c)
            c.total_steps = 4
        c.study = "fkt"  # jssl/studies/fkt.py runs every arm
        c.compare = ml_collections.ConfigDict(
            dict(
                # 1.0: the paper's setting (every label, the pretext on the same images)
                fractions=(0.01, 1.0) if full else (0.1,),
                seeds=(0, 1, 2, 3, 4) if full else (0,),
                tune_seed=100,  # the tuning runs' seed (and labelled subset), not a test seed
                # Every arm's learning rate over the same grid (docs/studies.md rule 3);
                # representational: both stages'. Optional second grids, all three or
                # none, of one size: lambda, the fine-tuning lr, the weight decay (empty:
                # the paper's lambda 1, the fine-tuning lr = the chosen lr, wd 5e-4);
                # left empty here for the time a 2-core machine has.
                lrs=(0.03, 0.1, 0.3) if full else (0.1,),
                ssl_weights=(),
                finetune_lrs=(),
                weight_decays=(),
            )
        )
        c.joint.labelled_batch_size = 32 if full else 16
        c.eval.random_init_baseline = False
    elif preset == "cifar10":
        jc.cifar10_preset(c, epochs=100)
        jc.solo_cifar_augment(c, "symmetric")
        c.joint.labelled_batch_size = 256
        c.optimizer.warmup_steps = 0
    else:
        raise jc.unknown_preset(
            "configs/fkt.py", preset, ("smoke", "cifar10", "compare", "compare_smoke")
        )
    # Labels train the classifier: train on the training split only, so that the
    # validation split stays unseen for model selection.
    c.data.train_split = c.eval.train_split
    return c
