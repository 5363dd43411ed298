"""The one network: non-local VGG16 / InceptionV3 backbones, CAM heads, the causal context pool."""
