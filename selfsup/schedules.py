"""Learning-rate schedule of the self-supervised methods: one cycle of linear warm-up, then cosine decay.

Pretext training starts from random heads on top of pretrained (or random) weights: large early
steps would wreck the pretrained features, so the rate climbs from 0 to its peak over the first
WARMUP_FRACTION of all steps, then follows a half cosine down to 0 at the last step.
"""
import keras

WARMUP_FRACTION = 0.1


def warmup_cosine(learning_rate, steps_per_epoch, epochs):
    """A Keras schedule peaking at `learning_rate` after WARMUP_FRACTION of steps_per_epoch x epochs steps."""
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, int(WARMUP_FRACTION * total))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warmup),
                                                  warmup_target=learning_rate, warmup_steps=warmup)
