"""Pretrained image backbones (EfficientNet-Lite0/1/2, ImageNet) for feature-based detectors.

Use `backbones.pretrained`: classifier(), feature_extractor(), load_backbone(), VARIANTS.
Nothing is re-exported here, so `backbones.torch_weights` can be imported without Keras.
"""
