"""Dehazing: its options, its pipeline around the engine (DCP start, recomposition), the dark channel
prior in numpy and torch, and the synthetic haze for training and evaluation."""
