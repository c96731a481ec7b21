"""Refusion networks, state-dict compatible with the reference checkpoints, and one registry.

``build(variant, config)`` makes a network from the reference constructor arguments;
``infer(state_dict)`` recognises the architecture and its configuration from keys and shapes (the
spandrel way), so that a checkpoint with a non-default width, depth or channel count converts
without being told its configuration.
"""
import re

from .compressor import Compressor
from .nafnet import VARIANTS as NOISE_VARIANTS, ConditionalNAFNet

ALL_VARIANTS = NOISE_VARIANTS + ("compressor",)
NOISE_KEYS = ("img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums")
COMPRESSOR_KEYS = ("in_ch", "out_ch", "ch", "ch_mult", "embed_dim")


class ArchitectureError(ValueError):
    """A state dict that is not a known Refusion network (or an inconsistent one)."""


def build(variant, config):
    """A network of ``variant`` (pixel | latent | bokeh | stereo | compressor) from reference arguments."""
    config = dict(config)
    if variant == "compressor":
        unknown = set(config) - set(COMPRESSOR_KEYS)
        if unknown:
            raise ValueError(f"unknown compressor config keys: {sorted(unknown)}")
        return Compressor(**config)
    if variant not in NOISE_VARIANTS:
        raise ValueError(f"unknown network variant {variant!r}; expected one of {ALL_VARIANTS}")
    unknown = set(config) - set(NOISE_KEYS) - {"upscale", "prediction", "sigma_data"}
    if unknown:
        raise ValueError(f"unknown noise-network config keys: {sorted(unknown)}")
    return ConditionalNAFNet(**config, variant=variant)


def attach_schedule(net, sde_settings):
    """Give an x0-predicting noise network (``ConditionalNAFNet``'s ``prediction``) the m_t and σ̄_t of
    the schedule ``sde_settings`` (a model file's ``sde``) it converts its output to ε with; an ε
    network is returned as it is."""
    if getattr(net, "prediction", "eps") == "x0":
        from .. import sde
        net.set_schedule(*sde.signal_and_noise(sde.make_schedule(**sde_settings)))
    return net


def strip_prefix(state_dict, prefix="module."):
    """Drop a DataParallel-style prefix when every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _count_blocks(keys, stage):
    """Blocks per stage index, e.g. encoders.<i>.<j>.* → [n_0, n_1, …]."""
    counts = {}
    for key in keys:
        m = re.match(rf"{stage}\.(\d+)\.(\d+)\.", key)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            counts[i] = max(counts.get(i, 0), j + 1)
    return [counts.get(i, 0) for i in range(max(counts) + 1)] if counts else []


def _shape(sd, key):
    if key not in sd:
        raise ArchitectureError(f"missing tensor {key!r}")
    return tuple(sd[key].shape)


def infer(state_dict, noise_variant=None):
    """(variant, config) of a reference state dict, from its keys and shapes.

    ``pixel`` and ``latent`` networks have identical keys; ``noise_variant`` ('pixel' or 'latent',
    e.g. from the task or from a compressor being present) decides between them (default pixel).
    """
    sd = strip_prefix(state_dict)
    keys = list(sd)
    if "init_conv.weight" in sd:
        ch, in_ch = _shape(sd, "init_conv.weight")[:2]
        mult = []
        for i in range(len(_count_blocks(keys, "encoder")) or 0):
            mult.append(_shape(sd, f"encoder.{i}.3.weight")[0] // ch)
        if not mult:
            raise ArchitectureError("compressor without encoder levels")
        config = dict(in_ch=in_ch, out_ch=_shape(sd, "final_conv.weight")[0], ch=ch, ch_mult=mult,
                      embed_dim=_shape(sd, "latent_conv.weight")[0])
        return "compressor", config
    if "intro.weight" not in sd:
        raise ArchitectureError("not a Refusion network: neither 'intro.weight' (NAFNet) nor "
                                "'init_conv.weight' (compressor) is present")
    width, in2 = _shape(sd, "intro.weight")[:2]
    img_channel = _shape(sd, "ending.weight")[0]
    if "cam_mlp.0.weight" in sd:
        variant = "bokeh"
    elif any(".fusion." in k for k in keys):
        variant = "stereo"
    else:
        variant = noise_variant if noise_variant in ("pixel", "latent") else "pixel"
    if in2 != 2 * img_channel:
        raise ArchitectureError(f"intro takes {in2} channels but ending gives {img_channel}: "
                                "expected intro channels = 2 × image channels")
    config = dict(img_channel=img_channel, width=width,
                  middle_blk_num=len({int(m.group(1)) for k in keys
                                      if (m := re.match(r"middle_blks\.(\d+)\.", k))}),
                  enc_blk_nums=_count_blocks(keys, "encoders"),
                  dec_blk_nums=_count_blocks(keys, "decoders"))
    return variant, config


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())
