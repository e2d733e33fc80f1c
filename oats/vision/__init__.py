"""Vision transformers: ViT, DINOv2 and timm ViTs through the same driver, image data, accuracy, attention rollout.

* :mod:`.models` - load an image classifier and its preprocessing (transformers, timm, the committed
  Fashion-MNIST ViT ``fmnist-vit``).
* :mod:`.data` - ImageFolder trees, Fashion-MNIST, the paper's preprocessing (Resize, no crop, model's
  normalisation) and calibration images.
* :mod:`.evaluate` - top-1 / top-5 accuracy.
* :mod:`.rollout` - attention rollout and the three-way view (full, sparse term, low-rank term).
* :mod:`.train_fmnist` - the seeded training script of the Fashion-MNIST ViT.

Compression itself is :func:`oats.compress` / :func:`oats.compress_model` with an
``(n, C, H, W)`` tensor of preprocessed calibration images.
"""
