"""Small Vision Transformer pieces (keras.layers / keras.ops only): patches, positions, blocks.

`patchify` cuts (B, H, W, C) images into (B, N, p*p*C) rows in raster order, `unpatchify`
reverses it. Positions are the fixed 2-D sine-cosine table of the MAE paper (He et al. 2022): it
needs no training, which matters for models trained from scratch on a few hundred images.
`TransformerBlock` is the pre-norm ViT block (LayerNorm -> attention -> residual, LayerNorm ->
GELU MLP -> residual).
"""
import keras
import numpy as np
from keras import layers, ops

HEAD_DIM = 32  # attention width per head: dim 128 -> 4 heads, dim 64 -> 2


def patchify(images, patch):
    """(B, H, W, C) -> (B, (H/p) * (W/p), p * p * C), patches in raster order, pixels row-major."""
    _, height, width, channels = images.shape
    rows, columns = height // patch, width // patch
    x = ops.reshape(images, (-1, rows, patch, columns, patch, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, rows * columns, patch * patch * channels))


def unpatchify(patches, patch, grid, channels):
    """(B, grid * grid, p * p * C) -> (B, grid * p, grid * p, C); the inverse of `patchify`."""
    x = ops.reshape(patches, (-1, grid, grid, patch, patch, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, grid * patch, grid * patch, channels))


def sincos_positions(grid, dim):
    """(grid * grid, dim) float32: half the channels encode the row, half the column (MAE's table)."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine table needs a width divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, columns = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(positions):
        angles = positions.reshape(-1, 1) * frequencies
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(columns)], axis=1).astype(np.float32)


@keras.saving.register_keras_serializable(package="selfsup")
class TransformerBlock(layers.Layer):
    """Pre-norm transformer encoder block on (B, tokens, dim)."""

    def __init__(self, dim, mlp_ratio=4, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.mlp_ratio = int(dim), int(mlp_ratio)
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6)
        self.attention = layers.MultiHeadAttention(num_heads=max(1, self.dim // HEAD_DIM),
                                                   key_dim=min(HEAD_DIM, self.dim))
        self.mlp_norm = layers.LayerNormalization(epsilon=1e-6)
        self.mlp_hidden = layers.Dense(self.dim * self.mlp_ratio)
        self.mlp_out = layers.Dense(self.dim)

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_hidden.build(input_shape)
        self.mlp_out.build((*input_shape[:-1], self.dim * self.mlp_ratio))
        self.built = True

    def call(self, tokens):
        x = self.attention_norm(tokens)
        tokens = tokens + self.attention(x, x)
        # The tanh form of GELU: the exact one needs erfc, which ONNX runtimes lack (export.py).
        return tokens + self.mlp_out(ops.gelu(self.mlp_hidden(self.mlp_norm(tokens)), approximate=True))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "mlp_ratio": self.mlp_ratio}
