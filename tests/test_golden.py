"""tilediff's networks and IR-SDE reproduce the reference implementation (tests/golden)."""
import json

import pytest
import torch

from conftest import relative_error
from tilediff import sde
from tilediff.models import build, count_parameters, infer, strip_prefix

FORWARD_TOL = 1e-5
TRAJECTORY_TOL = 1e-4
SCHEDULE_TOL = 1e-6

NETWORKS = ["nafnet_latent_small", "nafnet_pixel_small", "nafnet_bokeh_small", "nafnet_stereo_small",
            "unet_dehaze", "unet_bokeh_small"]


@pytest.mark.parametrize("name", NETWORKS)
def test_checkpoint_loads_strictly_with_reference_parameter_count(golden_net, golden_index, name):
    net = golden_net(name)
    assert count_parameters(net) == golden_index[name]["params"]


@pytest.mark.parametrize("name", NETWORKS)
def test_architecture_inferred_from_keys_and_shapes(golden_dir, golden_index, name):
    sd = torch.load(golden_dir / f"{name}.pth", weights_only=True)
    hint = "latent" if "latent" in name else None
    assert infer(sd, hint) == (golden_index[name]["variant"], golden_index[name]["config"])


def test_module_prefixed_checkpoint_loads(golden_dir, golden_net):
    sd = torch.load(golden_dir / "nafnet_pixel_small_module_prefix.pth", weights_only=True)
    assert all(k.startswith("module.") for k in sd)
    net = build(*infer(sd))
    net.load_state_dict(strip_prefix(sd), strict=True)
    ref = golden_net("nafnet_pixel_small").state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("t", [1, 37, 100])
def test_latent_noise_network(golden_net, vectors, t):
    with torch.no_grad():
        out = golden_net("nafnet_latent_small")(vectors["G_latent.x"], vectors["G_latent.cond"], t)
    assert relative_error(out, vectors[f"G_latent.out_t{t}"]) <= FORWARD_TOL


def test_latent_noise_network_with_batched_time_tensor(golden_net, vectors):
    x = vectors["G_latent.x"]
    with torch.no_grad():
        out = golden_net("nafnet_latent_small")(x, vectors["G_latent.cond"], torch.tensor([37, 37]))
    assert relative_error(out, vectors["G_latent.out_t37"]) <= FORWARD_TOL


def test_pixel_noise_network(golden_net, vectors):
    with torch.no_grad():
        out = golden_net("nafnet_pixel_small")(vectors["G_pixel.x"], vectors["G_pixel.cond"], 50)
    assert relative_error(out, vectors["G_pixel.out_t50"]) <= FORWARD_TOL


def test_bokeh_noise_network(golden_net, vectors):
    v = vectors
    with torch.no_grad():
        out = golden_net("nafnet_bokeh_small")(v["G_bokeh.x"], v["G_bokeh.cond"], 20, v["G_bokeh.src_lens"],
                                               v["G_bokeh.tgt_lens"], v["G_bokeh.disparity"])
    assert relative_error(out, v["G_bokeh.out_t20"]) <= FORWARD_TOL


def test_bokeh_network_refuses_to_run_without_lens_information(golden_net, vectors):
    with pytest.raises(ValueError, match="src_lens"):
        golden_net("nafnet_bokeh_small")(vectors["G_bokeh.x"], vectors["G_bokeh.cond"], 20)


def test_stereo_noise_network(golden_net, vectors):
    with torch.no_grad():
        out = golden_net("nafnet_stereo_small")(vectors["G_stereo.x"], vectors["G_stereo.cond"], 70)
    assert relative_error(out, vectors["G_stereo.out_t70"]) <= FORWARD_TOL


@pytest.mark.parametrize("name,t", [("latent", 37), ("pixel", 50), ("bokeh", 20), ("stereo", 70)])
def test_in_place_inference_blocks_give_the_autograd_path_numbers_bit_for_bit(golden_net, vectors, name, t):
    """Without autograd the NAFBlocks run in place (NAFBlock._forward_in_place): the same numbers."""
    net = golden_net(f"nafnet_{name}_small")
    lens = [vectors[f"G_bokeh.{k}"] for k in ("src_lens", "tgt_lens", "disparity")] if name == "bokeh" else []
    args = (vectors[f"G_{name}.x"], vectors[f"G_{name}.cond"], t, *lens)
    with torch.no_grad():
        in_place = net(*args)
    with torch.enable_grad():
        reference = net(*args)
    assert reference.requires_grad
    assert torch.equal(in_place, reference.detach())


@pytest.mark.parametrize("name,t", [("latent", 37), ("bokeh", 20), ("stereo", 70)])
def test_in_place_blocks_in_strips_of_rows_give_the_autograd_path_numbers(golden_net, vectors, monkeypatch, name, t):
    """Large maps run the in-place NAFBlocks in strips of rows (NAFBlock._forward_in_strips: the
    depthwise convolution's halo row, SCA's mean over the whole map); with a strip size of a few
    rows the golden inputs take that path at their finer levels, and give the autograd path's numbers."""
    from tilediff.models import nafnet
    net = golden_net(f"nafnet_{name}_small")
    lens = [vectors[f"G_bokeh.{k}"] for k in ("src_lens", "tgt_lens", "disparity")] if name == "bokeh" else []
    x = vectors[f"G_{name}.x"]
    args = (x, vectors[f"G_{name}.cond"], t, *lens)
    width, batch = net.intro.out_channels, x.shape[0] * (2 if name == "stereo" else 1)   # stereo: both views
    monkeypatch.setattr(nafnet, "STRIP_BYTES", 4 * batch * 2 * width * x.shape[-1] * 4)   # 2 rows a strip at full size
    assert nafnet.strip_rows(torch.empty(batch, width, x.shape[-2], x.shape[-1]), 2 * width) == 2
    with torch.no_grad():
        in_strips = net(*args)
    with torch.enable_grad():
        reference = net(*args).detach()
    assert relative_error(in_strips, reference) <= 1e-6
    assert relative_error(in_strips, vectors[f"G_{name}.out_t{t}"]) <= FORWARD_TOL


def test_dehaze_compressor_encode_decode(golden_net, vectors):
    net = golden_net("unet_dehaze")
    with torch.no_grad():
        latent, hidden = net.encode(vectors["L_dehaze.img"])
        assert relative_error(latent, vectors["L_dehaze.latent"]) <= FORWARD_TOL
        assert len(hidden) == 9
        for i, h in enumerate(hidden):
            assert relative_error(h, vectors[f"L_dehaze.hidden{i}"]) <= FORWARD_TOL
        assert relative_error(net.decode(latent, hidden), vectors["L_dehaze.decoded"]) <= FORWARD_TOL
        other = net.decode(vectors["L_dehaze.other_latent"], hidden)
        assert relative_error(other, vectors["L_dehaze.decoded_other_latent"]) <= FORWARD_TOL


def test_bokeh_compressor(golden_net, vectors):
    net = golden_net("unet_bokeh_small")
    with torch.no_grad():
        latent, hidden = net.encode(vectors["L_bokeh.img"])
        assert relative_error(latent, vectors["L_bokeh.latent"]) <= FORWARD_TOL
        assert relative_error(net.decode(latent, hidden), vectors["L_bokeh.decoded"]) <= FORWARD_TOL


SCHEDULES = {
    "cos50": dict(max_sigma=50, T=100, schedule="cosine", eps=0.005),
    "cos70_T1000": dict(max_sigma=70, T=1000, schedule="cosine", eps=0.005),
    "lin30": dict(max_sigma=30, T=100, schedule="linear", eps=0.005),
    "cos10_eps01": dict(max_sigma=10, T=100, schedule="cosine", eps=0.01),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules(vectors, name):
    sch = sde.make_schedule(**SCHEDULES[name])
    for field in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars"):
        assert relative_error(getattr(sch, field), vectors[f"sde.{name}.{field}"]) <= SCHEDULE_TOL, field
    assert sch.dt == pytest.approx(vectors[f"sde.{name}.dt"].item(), rel=SCHEDULE_TOL)


@pytest.mark.parametrize("t", [1, 5, 10])
def test_training_target_and_marginal_mean(vectors, t):
    sch = sde.make_schedule(50, 10, "cosine", 0.005)
    v = vectors
    assert relative_error(sde.optimum(sch, v["train.xt"], v["train.x0"], v["train.mu"], t),
                          v[f"train.optimum_t{t}"]) <= SCHEDULE_TOL
    assert relative_error(sde.mu_bar(sch, v["train.x0"], v["train.mu"], t), v[f"train.mu_bar_t{t}"]) <= SCHEDULE_TOL


@pytest.mark.parametrize("sampler", ["ode", "sde", "posterior"])
def test_ten_step_latent_restoration(golden_net, vectors, sampler):
    v = vectors
    sch = sde.make_schedule(50, 10, "cosine", 0.005)
    noise_net, compressor = golden_net("nafnet_latent_small"), golden_net("unet_dehaze")
    with torch.no_grad():
        latent, hidden = compressor.encode(v["pipe.lq"])
        assert relative_error(latent, v["pipe.latent_lq"]) <= FORWARD_TOL
        x_t = sde.start_state(sch, latent, v["pipe.noise0"])
        assert relative_error(x_t, v["pipe.xT"]) <= FORWARD_TOL
        noise = (lambda t, like: v[f"pipe.{sampler}.z_step{t}"]) if sampler != "ode" else None
        out = sde.sample(lambda x, t: noise_net(x, latent, t), x_t, latent, sch, sampler, noise)
        assert relative_error(out, v[f"pipe.{sampler}.latent"]) <= TRAJECTORY_TOL
        assert relative_error(compressor.decode(out, hidden), v[f"pipe.{sampler}.image"]) <= TRAJECTORY_TOL


def test_training_loss_is_zero_at_the_optimum_noise():
    """The reverse step with the true noise lands on the optimum only in expectation; but with
    ε chosen so that the step equals the optimum, the loss is exactly zero and positive otherwise."""
    sch = sde.make_schedule(50, 10)
    g = torch.Generator().manual_seed(0)
    x0, mu, xt = (torch.rand(1, 3, 8, 8, generator=g) for _ in range(3))
    t = 4
    target = sde.optimum(sch, xt, x0, mu, t)
    # solve xt − [θ(μ−xt) + σ² ε/σ̄] dt = target for ε
    eps = ((xt - target) / sch.dt - sch.thetas[t] * (mu - xt)) * sch.sigma_bars[t] / sch.sigmas[t] ** 2
    assert sde.training_loss(sch, eps, xt, x0, mu, t).item() < 1e-5
    assert sde.training_loss(sch, eps + 0.1, xt, x0, mu, t).item() > 1e-3


@pytest.mark.parametrize("entry", ["dehaze_G", "dehaze_L", "bokeh_G", "bokeh_L", "pixel_G", "stereo_G"])
def test_official_configurations_have_reference_keys_shapes_and_counts(golden_dir, entry):
    manifest = json.loads((golden_dir / "official_manifests.json").read_text())[entry]
    with torch.device("meta"):
        net = build(manifest["variant"], manifest["config"])
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert count_parameters(net) == manifest["params"]
    fake = {k: torch.empty(s, device="meta") for k, s in manifest["state_dict"].items()}
    assert infer(fake, manifest["variant"]) == (manifest["variant"], manifest["config"])
