"""The noise network's x0 output parametrisation (ConditionalNAFNet prediction='x0', training --prediction x0)."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import image_folder, torch_threads
from tilediff import sde
from tilediff.models import attach_schedule, build
from tilediff.restorer import Restorer
from tilediff.weights import load_model, read_metadata

TINY = {"img_channel": 4, "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
SDE = {"max_sigma": 30, "T": 100}
S = 0.15


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _pair():
    """An ε network and an x0 network with the same weights, and a realistic state y_t = m y_0 + σ̄ z."""
    torch.manual_seed(0)
    eps_net = build("latent", TINY).eval()
    x0_net = attach_schedule(build("latent", dict(TINY, prediction="x0", sigma_data=S)), SDE).eval()
    x0_net.load_state_dict(eps_net.state_dict(), strict=True)
    sch = sde.make_schedule(**SDE)
    g = torch.Generator().manual_seed(1)
    mu = 0.4 * torch.randn(2, 4, 16, 16, generator=g)
    x0 = mu + S * torch.randn(2, 4, 16, 16, generator=g)
    z = torch.randn(2, 4, 16, 16, generator=g)
    return eps_net, x0_net, sch, mu, x0, z


@pytest.mark.parametrize("t", [1, 10, 50, 100])
def test_an_x0_network_returns_the_eps_of_its_preconditioned_estimate(t):
    eps_net, x0_net, sch, mu, x0, z = _pair()
    xt = sde.noisy_state(sch, x0, mu, t, z)
    with torch.no_grad():
        raw = eps_net(xt, mu, t)                 # the same layers: the x0 network's output F
        eps = x0_net(xt, mu, t)
    m, sb = (float(v[t]) for v in sde.signal_and_noise(sch))
    d = m * m * S * S + sb * sb
    expected_x0 = mu + (m * S * S / d) * (xt - mu) - (S * sb / d ** 0.5) * raw    # c_skip·y − c_out·F
    torch.testing.assert_close(sde.predict_x0(sch, xt, mu, eps, t), expected_x0, atol=2e-5, rtol=1e-4)
    if t == 1:   # at small t F is ε itself (ε has unit spread): an ε network is a good start for an x0 network
        assert float((eps - raw).abs().mean()) < 0.02
    if t == 100:  # at t = T an F error of δ moves x̂0 by ≈ s·δ, not the ε network's σ̄/m ≈ 24·δ
        with torch.no_grad():
            moved = x0_net.ending.bias.add_(0.1)
            shifted = sde.predict_x0(sch, xt, mu, x0_net(xt, mu, t), t)
            moved.sub_(0.1)
        change = float((shifted - sde.predict_x0(sch, xt, mu, eps, t)).abs().mean())
        assert change == pytest.approx(S * sb / d ** 0.5 * 0.1, rel=1e-3)
        assert change < 0.02


def test_x0_prediction_settings_are_checked_and_the_schedule_is_needed():
    with pytest.raises(ValueError, match="unknown prediction 'v'"):
        build("latent", dict(TINY, prediction="v"))
    with pytest.raises(ValueError, match="needs sigma_data > 0"):
        build("latent", dict(TINY, prediction="x0"))
    net = build("latent", dict(TINY, prediction="x0", sigma_data=S))
    with pytest.raises(RuntimeError, match="needs set_schedule"):
        net(torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16), 5)
    eps_net = build("latent", TINY)
    assert attach_schedule(eps_net, SDE) is eps_net and eps_net._signal is None   # ε networks: untouched
    assert set(net.state_dict()) == set(eps_net.state_dict())   # the schedule is not in the file's tensors


def _smooth_image(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (a * xx + b * yy) + c)
                    for a, b, c in rng.uniform(0.3, 2.0, size=(3, 3))], axis=2)
    return np.clip(img, 0, 1).astype(np.float32)


def test_training_with_x0_prediction_from_an_eps_file_writes_a_model_that_restores(tmp_path_factory, tmp_path):
    from tilediff.cli.train import train_cmd
    folder = image_folder(tmp_path_factory, "clean", _smooth_image, [(64, 80), (72, 64)], "img")
    runner = CliRunner()
    common = ["--clean", str(folder), "--batch", "2", "--crop", "32", "--noise-crop", "32", "--ch", "4",
              "--ch-mult", "1,2", "--embed-dim", "4", "--width", "8", "--enc-blocks", "1,1", "--dec-blocks", "1,1",
              "--threads", "0", "--max-sigma", "30", "--no-progress"]
    eps_file = tmp_path / "eps.safetensors"
    r = runner.invoke(train_cmd, common + ["--out", str(eps_file), "--iters", "2", "--state-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    x0_file = tmp_path / "x0.safetensors"
    r = runner.invoke(train_cmd, common + ["--out", str(x0_file), "--stage", "noise", "--compressor", str(eps_file),
                                           "--init-noise", str(eps_file), "--noise-iters", "1", "--noise-loss", "x0",
                                           "--x0-cap", "100", "--prediction", "x0", "--sigma-data", "0.2",
                                           "--state-dir", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    config = read_metadata(x0_file)["noise_config"]
    assert config["prediction"] == "x0" and config["sigma_data"] == 0.2
    assert "prediction" not in read_metadata(eps_file)["noise_config"]     # ε files stay as they were
    model = load_model(x0_file)
    assert model.noise.prediction == "x0" and model.noise._signal.shape == (101,)
    m, sb = sde.signal_and_noise(sde.make_schedule(**model.sde))
    torch.testing.assert_close(model.noise._noise, sb)
    image = _smooth_image(np.random.default_rng(2), 40, 36)
    out = Restorer(weights=x0_file, device="cpu").restore(image, steps=3, seed=0)
    assert out.shape == (40, 36, 3) and np.isfinite(out).all()
