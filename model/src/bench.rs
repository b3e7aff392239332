//! Timing of forward passes and training steps.
