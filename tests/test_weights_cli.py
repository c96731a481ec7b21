"""Model files, checkpoint conversion and the first commands of the CLI."""
import collections

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import relative_error
from tilediff.cli import main
from tilediff.restorer import Restorer
from tilediff.weights import ModelFileError, convert, load_model, read_metadata


@pytest.fixture(scope="module")
def dehaze_small(golden_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "dehaze_small.safetensors"
    return convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze", output=out)


def test_converted_model_file_holds_the_reference_weights_and_metadata(golden_dir, golden_net, dehaze_small):
    meta = read_metadata(dehaze_small)
    assert meta["task"] == "dehaze" and meta["noise_variant"] == "latent"
    assert meta["compressor_config"]["ch_mult"] == [4, 8, 8, 16]
    assert meta["sde"] == {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005}
    assert len(meta["provenance"]["noise_checkpoint"]["sha256"]) == 64
    model = load_model(dehaze_small)
    ref = golden_net("nafnet_latent_small").state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.noise.state_dict().items())
    ref = golden_net("unet_dehaze").state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.compressor.state_dict().items())


@pytest.mark.parametrize("noise, compressor, task, variant", [
    ("nafnet_pixel_small_module_prefix", None, "deshadow", "pixel"),
    ("nafnet_pixel_small", None, None, "pixel"),
    ("nafnet_bokeh_small", "unet_bokeh_small", None, "bokeh"),
    ("nafnet_stereo_small", None, None, "stereo"),
    ("nafnet_latent_small", "unet_dehaze", None, "latent"),
])
def test_every_variant_converts_and_reproduces_its_forward(golden_dir, vectors, tmp_path, noise, compressor, task,
                                                          variant):
    comp = golden_dir / f"{compressor}.pth" if compressor else None
    path = convert(golden_dir / f"{noise}.pth", comp, task=task, output=tmp_path / "m.safetensors")
    model = load_model(path)
    assert model.noise_variant == variant
    v = vectors
    with torch.no_grad():
        if variant == "pixel":
            out, ref = model.noise(v["G_pixel.x"], v["G_pixel.cond"], 50), v["G_pixel.out_t50"]
        elif variant == "latent":
            out, ref = model.noise(v["G_latent.x"], v["G_latent.cond"], 37), v["G_latent.out_t37"]
        elif variant == "bokeh":
            out = model.noise(v["G_bokeh.x"], v["G_bokeh.cond"], 20, v["G_bokeh.src_lens"], v["G_bokeh.tgt_lens"],
                              v["G_bokeh.disparity"])
            ref = v["G_bokeh.out_t20"]
        else:
            out, ref = model.noise(v["G_stereo.x"], v["G_stereo.cond"], 70), v["G_stereo.out_t70"]
    assert relative_error(out, ref) <= 1e-5


def test_non_default_configuration_is_inferred(tmp_path):
    """A checkpoint with another width, depth and channel count converts without being told them."""
    from tilediff.models import build
    torch.manual_seed(0)
    noise = build("latent", dict(img_channel=4, width=24, middle_blk_num=2, enc_blk_nums=[2, 1, 3],
                                 dec_blk_nums=[1, 2, 1]))
    comp = build("compressor", dict(in_ch=3, out_ch=3, ch=12, ch_mult=[1, 3, 2], embed_dim=4))
    torch.save(noise.state_dict(), tmp_path / "g.pth")
    torch.save({"params": comp.state_dict()}, tmp_path / "l.pth")
    model = load_model(convert(tmp_path / "g.pth", tmp_path / "l.pth", task="dehaze", output=tmp_path / "m.safetensors"))
    assert model.noise_config == dict(img_channel=4, width=24, middle_blk_num=2, enc_blk_nums=[2, 1, 3],
                                      dec_blk_nums=[1, 2, 1])
    assert model.compressor_config == dict(in_ch=3, out_ch=3, ch=12, ch_mult=[1, 3, 2], embed_dim=4)
    x = torch.rand(1, 4, 19, 23)
    with torch.no_grad():
        assert torch.equal(model.noise(x, x * 0.5, 7), noise.eval()(x, x * 0.5, 7))


def _bad_checkpoints(golden_dir, tmp_path):
    data = (golden_dir / "nafnet_pixel_small.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("hello, not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"a": [1, 2, 3]}, tmp_path / "list.pth")
    torch.save(collections.OrderedDict(weight=torch.zeros(3)), tmp_path / "foreign.pth")
    sd = torch.load(golden_dir / "nafnet_pixel_small.pth", weights_only=True)
    sd["encoders.0.0.conv1.weight"] = sd["encoders.0.0.conv1.weight"][:5]
    torch.save(sd, tmp_path / "mismatched.pth")
    return ["truncated", "text", "empty", "list", "foreign", "mismatched"]


def test_bad_checkpoints_give_one_clear_line_and_write_nothing(golden_dir, tmp_path):
    runner = CliRunner()
    for name in _bad_checkpoints(golden_dir, tmp_path):
        out = tmp_path / f"{name}.safetensors"
        result = runner.invoke(main, ["convert", str(tmp_path / f"{name}.pth"), "-o", str(out)])
        assert result.exit_code == 1, (name, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"{name}.pth" in lines[0] and "error" in lines[0], (name, result.output)
        assert not out.exists()
        assert not list(tmp_path.glob("*.tmp"))


def test_mismatched_pair_and_wrong_task_are_refused(golden_dir, tmp_path):
    with pytest.raises(ModelFileError, match="not a pair"):
        convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_bokeh_small.pth", output=tmp_path / "x")
    with pytest.raises(ModelFileError, match="compressor checkpoint"):
        convert(golden_dir / "unet_dehaze.pth", output=tmp_path / "x")
    with pytest.raises(ModelFileError, match="does not fit task"):
        convert(golden_dir / "nafnet_stereo_small.pth", task="deshadow", output=tmp_path / "x")
    with pytest.raises(ModelFileError, match="compressor"):
        convert(golden_dir / "nafnet_latent_small.pth", task="dehaze", output=tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_info_and_tasks_commands(dehaze_small):
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(dehaze_small)])
    assert result.exit_code == 0 and "task:        dehaze" in result.output and "1.38 M parameters" in result.output
    result = runner.invoke(main, ["tasks"])
    assert result.exit_code == 0
    assert {line.split()[0] for line in result.output.splitlines()} >= {"dehaze", "deshadow", "bokeh", "stereo-sr"}
    result = runner.invoke(main, ["info", str(dehaze_small.parent / "missing.safetensors")])
    assert result.exit_code == 1 and "missing.safetensors" in result.output


def test_whole_image_restorer_matches_the_reference_pipeline(golden_net, dehaze_small):
    """Restorer(mode='whole') = encode → μ + λz → reverse ODE → decode, with the reference's networks."""
    from tilediff import sde
    rng = np.random.default_rng(1)
    image = rng.random((45, 61, 3)).astype(np.float32)
    out = Restorer("dehaze", weights=dehaze_small).restore(image, sampler="ode", seed=5, mode="whole")
    noise_net, compressor = golden_net("nafnet_latent_small"), golden_net("unet_dehaze")
    sch = sde.make_schedule(50, 100)      # every step of the model's schedule: the reference algorithm
    from tilediff.engine.rng import PositionalNoise
    with torch.no_grad():
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
        mu, hidden = compressor.encode(x)
        state = sde.start_state(sch, mu, PositionalNoise(5)(0, mu))
        state = sde.sample(lambda s, t: noise_net(s, mu, t), state, mu, sch, "ode")
        ref = compressor.decode(state, hidden).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.shape == (45, 61, 3)
    assert np.abs(out - ref).max() < 1e-5


def test_restorer_without_shipped_weights_says_what_to_do():
    with pytest.raises(ModelFileError, match="--weights"):
        Restorer("deshadow")


def test_model_files_are_written_with_the_umask_mode_not_owner_only(golden_dir, tmp_path):
    import os
    import stat
    out = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                  output=tmp_path / "m.safetensors")
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~old


def test_shipped_dehaze_model_with_its_defaults_dehazes_the_bundled_example():
    """End to end with the shipped file's own defaults (posterior sampler, 4 network evaluations per run
    from the dark channel prior's latent at t = 50, mean of 4 runs in four orientations of the latent,
    recomposed): the bundled example (held-out rocket photo, moderate synthetic haze) gains well over
    3 dB."""
    from pathlib import Path

    import tilediff
    from tilediff.training.metrics import psnr
    from tilediff.restorer import to_float_rgb
    from PIL import Image
    data = Path(tilediff.__file__).parent / "data"
    hazy = to_float_rgb(np.asarray(Image.open(data / "example_hazy.png")))
    clean = to_float_rgb(np.asarray(Image.open(data / "example_clean.png")))
    r = Restorer("dehaze")
    assert r.model.metadata["default_sampler"] == "posterior" and int(r.model.metadata["default_samples"]) == 4
    assert r.options().steps == 4
    assert r.default_ensemble
    out = r.restore(hazy)
    assert psnr(out, clean) > psnr(hazy, clean) + 4


def test_metadata_flags_are_read_from_their_json_text():
    from tilediff.weights import metadata_flag
    assert metadata_flag({"default_ensemble": "true"}, "default_ensemble")
    assert metadata_flag({"default_ensemble": True}, "default_ensemble")
    assert not metadata_flag({"default_ensemble": "false"}, "default_ensemble")
    assert not metadata_flag({}, "default_ensemble")
