"""Training and evaluation (tilediff.training, tilediff.cli.train) on tiny networks and images."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import image_folder, torch_threads
from tilediff import sde
from tilediff import training as T
from tilediff.restorer import Restorer
from tilediff.tasks.dehaze import haze
from tilediff.weights import load_model, read_metadata

TINY_COMPRESSOR = {"in_ch": 3, "out_ch": 3, "ch": 4, "ch_mult": [1, 2], "embed_dim": 4}
TINY_NOISE = {"img_channel": 4, "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


def _smooth_image(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (a * xx + b * yy) + c)
                    for a, b, c in rng.uniform(0.3, 2.0, size=(3, 3))], axis=2)
    img[h // 4: h // 2, w // 4: w // 2] *= 0.5  # an edge
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and do not fight a busy machine's other jobs)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory, "clean", _smooth_image, [(64, 80), (72, 64), (48, 56)], "img")


def _config(folder, state_dir, iters=3):
    stage = dict(batch=2, crop=32, warmup=1, save_every=2, ema_every=1, log_every=1)
    return T.TrainConfig(clean=str(folder), compressor_config=dict(TINY_COMPRESSOR), noise_config=dict(TINY_NOISE),
                         compressor=T.StageConfig(iters=iters, optimizer="adamw", lr=1e-3, **stage),
                         noise=T.StageConfig(iters=iters, optimizer="lion", lr=1e-4, **stage),
                         threads=None, state_dir=str(state_dir), progress=False, command="pytest")


def test_train_both_stages_gives_a_model_that_restores(folder, tmp_path):
    cfg = _config(folder, tmp_path / "state")
    out = T.train(cfg, tmp_path / "model.safetensors", stage="both")
    model = load_model(out)
    assert model.task == "dehaze" and model.compressor is not None
    meta = read_metadata(out)
    assert meta["training"]["compressor"]["iters"] == 3 and meta["training"]["noise"]["iters"] == 3
    assert meta["training"]["data"]["kind"] == "synthetic haze"
    assert meta["sde"]["max_sigma"] == 50
    img = _smooth_image(np.random.default_rng(1), 40, 36)
    restored = Restorer(weights=out, device="cpu").restore(img, steps=3, seed=0)
    assert restored.shape == (40, 36, 3) and restored.dtype == np.float32
    assert np.isfinite(restored).all()


def test_resume_continues_from_the_saved_step(folder, tmp_path):
    state = tmp_path / "state"
    first, hist1 = T.train_compressor(_config(folder, state, iters=3), tmp_path / "c.safetensors")
    ck = T.load_checkpoint(state / "compressor.ckpt")
    assert ck["step"] == 3 and len(ck["history"]) == 3
    _, hist2 = T.train_compressor(_config(folder, state, iters=5), tmp_path / "c.safetensors", resume=True)
    assert len(hist2) == 5 and hist2[:3] == hist1
    ck = T.load_checkpoint(state / "compressor.ckpt")
    assert ck["step"] == 5 and ck["done"]
    # the noise stage resumes the same way
    _, n1 = T.train_noise(_config(folder, state, iters=2), tmp_path / "c.safetensors", tmp_path / "m.safetensors")
    _, n2 = T.train_noise(_config(folder, state, iters=4), tmp_path / "c.safetensors", tmp_path / "m.safetensors",
                          resume=True)
    assert n2[:2] == n1 and len(n2) == 4
    assert T.load_checkpoint(state / "noise.ckpt")["step"] == 4


def test_lion_step_matches_its_formula():
    p0 = torch.tensor([0.5, -1.0, 2.0, 0.0])
    g1 = torch.tensor([0.3, -0.2, 0.0, 1.0])
    g2 = torch.tensor([-1.0, -0.1, 0.5, -0.05])
    lr, wd, b1, b2 = 0.1, 0.01, 0.9, 0.99
    p = torch.nn.Parameter(p0.clone())
    opt = T.Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    m = torch.zeros(4)
    expected = p0.clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        expected = expected * (1 - lr * wd) - lr * torch.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)


def test_cosine_lr_and_ema():
    assert T.cosine_lr(0, 100, 1.0, 0.0) == pytest.approx(1.0)
    assert T.cosine_lr(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert T.cosine_lr(100, 100, 1.0, 0.1) == pytest.approx(0.1)
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = T.EMA(net, decay=0.5, every=2, warmup=False)
    net.weight.data.fill_(1.0)
    ema.update(net, step=0)      # not an update step
    assert ema.shadow["weight"].sum() == 0
    ema.update(net, step=1)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.5))


def test_eval_reports_per_image_and_mean(folder, tmp_path):
    cfg = _config(folder, tmp_path / "state", iters=2)
    model = T.train(cfg, tmp_path / "model.safetensors", stage="both")
    imgs = [(f"t{i}.png", _smooth_image(np.random.default_rng(10 + i), 48, 40)) for i in range(2)]
    res = T.evaluate(model, imgs, steps=2, seed=3)
    assert [r["name"] for r in res["per_image"]] == ["t0.png", "t1.png"]
    for row in res["per_image"] + [res["mean"]]:
        for k in ("hazy_psnr", "dcp_psnr", "psnr"):
            assert 3 < row[k] < 60
        for k in ("hazy_ssim", "dcp_ssim", "ssim"):
            assert -1 <= row[k] <= 1
    assert res["mean"]["hazy_psnr"] == pytest.approx(np.mean([r["hazy_psnr"] for r in res["per_image"]]), abs=1e-3)
    # the haze is deterministic: the same seed gives the same hazy input
    assert T.evaluate(model, imgs[:1], steps=1, seed=3, baseline=False)["per_image"][0]["hazy_psnr"] == \
        res["per_image"][0]["hazy_psnr"]
    assert "| **mean** |" in T.markdown_table(res)
    # without steps, the run (and its report) takes the model file's default_steps
    from tilediff.weights import update_metadata
    update_metadata(model, default_steps=3)
    assert T.evaluate(model, imgs[:1], seed=3, baseline=False)["steps"] == 3


def test_cli_train_and_eval(folder, tmp_path):
    from tilediff.cli.train import eval_cmd, train_cmd
    out = tmp_path / "m.safetensors"
    runner = CliRunner()
    args = ["--clean", str(folder), "--out", str(out), "--iters", "2", "--batch", "2", "--crop", "32",
            "--noise-crop", "32", "--ch", "4", "--ch-mult", "1,2", "--embed-dim", "4", "--width", "8",
            "--enc-blocks", "1,1", "--dec-blocks", "1,1", "--threads", "0", "--max-sigma", "30",
            "--state-dir", str(tmp_path / "st"), "--no-progress"]
    r = runner.invoke(train_cmd, args)
    assert r.exit_code == 0, r.output
    assert read_metadata(out)["sde"]["max_sigma"] == 30
    assert read_metadata(out)["training"]["command"][0].startswith("tilediff train ")
    r = runner.invoke(eval_cmd, ["--weights", str(out), "--clean", str(folder), "--steps", "2",
                                 "--json", str(tmp_path / "e.json"), "--store"])
    assert r.exit_code == 0, r.output
    assert "| **mean** |" in r.output
    assert len(json.loads((tmp_path / "e.json").read_text())["per_image"]) == 3
    assert read_metadata(out)["quality"]["mean"]["psnr"] > 0
    # several densities and seeds: one row per density, means over images × seeds
    r = runner.invoke(eval_cmd, ["--weights", str(out), "--clean", str(folder), "--steps", "2", "--density",
                                 "light,dense", "--seed", "0,1", "--json", str(tmp_path / "g.json"), "--store",
                                 "--save-images", str(tmp_path / "imgs")])
    assert r.exit_code == 0, r.output
    assert "| light | 6 |" in r.output and "| dense | 6 |" in r.output
    grid = json.loads((tmp_path / "g.json").read_text())
    assert [(run["density"], run["seed"]) for run in grid["runs"]] == [("light", 0), ("light", 1), ("dense", 0),
                                                                       ("dense", 1)]
    light = [row for run in grid["runs"][:2] for row in run["per_image"]]
    assert grid["summary"]["light"]["hazy_psnr"] == pytest.approx(np.mean([row["hazy_psnr"] for row in light]),
                                                                  abs=1e-3)
    assert grid["summary"]["light"]["hazy_psnr"] > grid["summary"]["dense"]["hazy_psnr"]   # less haze, closer
    assert read_metadata(out)["quality"]["summary"]["dense"]["n"] == 6
    assert len(list((tmp_path / "imgs" / "dense_seed1").glob("*_out.png"))) == 3
    r = runner.invoke(eval_cmd, ["--weights", str(out), "--clean", str(folder), "--density", "thick"])
    assert r.exit_code == 2 and "unknown haze density 'thick'" in r.output


def test_training_device_is_checked_and_recorded(folder, tmp_path):
    from tilediff.cli.train import train_cmd
    args = ["--clean", str(folder), "--batch", "2", "--crop", "32", "--noise-crop", "32", "--ch", "4", "--ch-mult",
            "1,2", "--embed-dim", "4", "--width", "8", "--enc-blocks", "1,1", "--dec-blocks", "1,1", "--threads", "0",
            "--iters", "1", "--no-progress", "--state-dir", str(tmp_path / "st")]
    runner = CliRunner()
    r = runner.invoke(train_cmd, args + ["--out", str(tmp_path / "bad.safetensors"), "--device", "gpu"])
    assert r.exit_code == 2 and "--device" in r.output and not (tmp_path / "bad.safetensors").exists()
    if not torch.cuda.is_available():
        r = runner.invoke(train_cmd, args + ["--out", str(tmp_path / "bad.safetensors"), "--device", "cuda"])
        assert r.exit_code == 2 and "no CUDA device is available" in r.output
    out = tmp_path / "m.safetensors"
    r = runner.invoke(train_cmd, args + ["--out", str(out), "--device", "auto"])
    assert r.exit_code == 0, r.output
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    training = read_metadata(out)["training"]
    assert training["noise"]["device"] == expected and training["compressor"]["device"] == expected


def test_skip_dropout_zeroes_whole_samples():
    from tilediff.models import build
    net = build("compressor", TINY_COMPRESSOR)
    _, hidden = net.encode(torch.rand(4, 3, 32, 32))
    torch.manual_seed(0)
    dropped = T.drop_skips(hidden, 0.5)
    assert dropped.image_size == hidden.image_size and len(dropped) == len(hidden)
    zero = [bool((d[i] == 0).all()) for i in range(4) for d in dropped[:1]]
    for d, h in zip(dropped, hidden):
        for i in range(4):
            assert (d[i] == 0).all() if zero[i] else torch.equal(d[i], h[i])
    assert all(torch.equal(d, h) for d, h in zip(T.drop_skips(hidden, 0.0), hidden))


def test_augment_rescales_and_jitters_within_its_ranges():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:300, 0:400] / 400.0
    img = np.stack([y, x, 0.5 * np.ones_like(x)], axis=2).astype(np.float32)
    outs = [T.augment_clean(img, rng, 128) for _ in range(20)]
    for out in outs:
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert 150 <= out.shape[0] <= 300 and 200 <= out.shape[1] <= 400 and min(out.shape[:2]) >= 128
        assert abs(out.shape[1] / out.shape[0] - 4 / 3) < 0.02          # aspect kept
    assert len({o.shape for o in outs}) > 5                             # sizes vary
    means = [float(o.mean()) for o in outs]
    assert max(means) - min(means) > 0.05                               # tones vary
    # a crop larger than half the short side limits the downscale
    assert min(T.augment_clean(img, rng, 280).shape[:2]) >= 280


def test_haze_source_with_augment_gives_full_crops(folder):
    src = T.make_source(clean=str(folder), augment=True)
    assert src.description["augment"]
    rng = np.random.default_rng(0)
    lq, gt = T.batch(src, rng, 3, 32)
    assert lq.shape == gt.shape == (3, 3, 32, 32)
    assert (lq != gt).any() and torch.isfinite(lq).all()


def _ir_sde_state(seed=0):
    sch = sde.make_schedule(max_sigma=30, T=100)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 8, 6, 5, generator=g) * 0.2
    mu = x0 + 0.1 * torch.randn(4, 8, 6, 5, generator=g)
    z = torch.randn(4, 8, 6, 5, generator=g)
    t = torch.tensor([1, 30, 70, 100]).view(4, 1, 1, 1)
    return sch, x0, mu, z, t, sde.noisy_state(sch, x0, mu, t, z)


def test_x0_loss_is_zero_for_the_true_noise_and_capped_at_large_t():
    sch, x0, mu, z, t, xt = _ir_sde_state()
    assert T.x0_loss(sch, z, xt, x0, mu, t) < 1e-6
    # an ε error δ costs min(w_t, cap)·|δ| per element, w_t = σ̄_t e^(θ̄_t dt)
    delta = 0.01
    w = sch.sigma_bars[t.flatten()] * torch.exp(sch.thetas_cumsum[t.flatten()] * sch.dt)
    expected = (torch.clamp(w, max=T.X0_LOSS_CAP) * delta).mean()
    got = T.x0_loss(sch, z + delta, xt, x0, mu, t)
    assert got == pytest.approx(float(expected), rel=1e-3)
    assert w[0] < 0.01 and w[-1] > 10 * T.X0_LOSS_CAP   # the cap matters at t = T and not at t = 1
    got = T.x0_loss(sch, z + delta, xt, x0, mu, t, cap=8.0)   # another cap (--x0-cap)
    assert got == pytest.approx(float((torch.clamp(w, max=8.0) * delta).mean()), rel=1e-3)


def test_late_steps_draw_half_the_batch_from_the_late_steps():
    from tilediff.training.losses import draw_steps
    torch.manual_seed(0)
    plain = draw_steps(100, 4000)
    assert plain.min() == 1 and plain.max() == 100
    torch.manual_seed(0)
    assert draw_steps(100, 4000, 0).equal(plain)             # 0: the reference's draw, same numbers
    late = draw_steps(100, 4000, 60)
    assert late[:2000].min() == 1 and late[2000:].min() == 60 and late.max() == 100
    assert float((late[:2000] >= 60).float().mean()) < 0.5
    with pytest.raises(ValueError, match="late_steps must be in"):
        draw_steps(100, 4, 101)
    assert T.TrainConfig().x0_cap == T.X0_LOSS_CAP and T.TrainConfig().late_steps == 0   # the defaults: as before


def test_a_prior_start_draws_the_states_around_the_estimates_latent_and_keeps_the_clean_target():
    from tilediff.models.compressor import Compressor
    from tilediff.training.losses import PriorStart
    torch.manual_seed(0)
    compressor = Compressor(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2], embed_dim=4).eval()
    lq, gt = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        mu, _ = compressor.encode(lq)
        x0, _ = compressor.encode(gt)
        estimate_latent, _ = compressor.encode(1 - lq)
    t = torch.full((6,), 90)
    everyone = PriorStart(lambda images: 1 - images, fraction=1.0, step=30)
    centre, steps = everyone.centres(compressor, lq, x0, t)
    torch.testing.assert_close(centre, estimate_latent)
    assert steps.eq(30).all() and t.eq(90).all()   # the caller's t untouched
    nobody = PriorStart(lambda images: 1 - images, fraction=0.0, step=30)
    centre, steps = nobody.centres(compressor, lq, x0, t)
    assert centre is x0 and steps is t
    torch.manual_seed(1)
    picked = torch.rand(6) < 0.5                                      # the draw centres() makes first
    torch.manual_seed(1)
    half = PriorStart(lambda images: 1 - images, fraction=0.5, step=30)
    centre, steps = half.centres(compressor, lq, x0, t)
    moved = (centre - x0).flatten(1).abs().amax(1) > 0
    assert moved.tolist() == picked.tolist() == [False, True, True, False, True, False]
    assert steps[moved].eq(30).all() and steps[~moved].eq(90).all()
    torch.testing.assert_close(centre[moved], estimate_latent[moved])
    # through the loss: the states come from the estimate's latent, the x̂0 target is still the clean latent
    sch = sde.make_schedule(max_sigma=30, T=100)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, xt, cond, steps):
            seen["xt"], seen["t"] = xt, steps
            return torch.zeros_like(xt)
    torch.manual_seed(5)
    loss, _ = T.noise_loss(Spy(), compressor, sch, lq, gt, "x0", prior_start=everyone)
    torch.manual_seed(5)
    _ = torch.randint(1, 101, (6,))                                  # the batch's steps, then its noise
    z = torch.randn_like(mu)
    tt = seen["t"].view(6, 1, 1, 1)
    torch.testing.assert_close(seen["xt"], sde.noisy_state(sch, estimate_latent, mu, tt, z))
    expected = T.x0_loss(sch, torch.zeros_like(mu), seen["xt"], x0, mu, tt)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_noise_loss_kinds_and_fine_tuning_from_a_model_file(folder, tmp_path):
    cfg = _config(folder, tmp_path / "state", iters=2)
    comp, _ = T.train_compressor(cfg, tmp_path / "c.safetensors")
    first, _ = T.train_noise(cfg, comp, tmp_path / "m.safetensors")
    compressor, _, _ = T.load_compressor(comp)
    net = load_model(first).noise.train()
    sch = sde.make_schedule(max_sigma=30, T=100)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    mle, _ = T.noise_loss(net, compressor, sch, lq, gt, "mle")
    torch.manual_seed(0)
    both, logs = T.noise_loss(net, compressor, sch, lq, gt, "mle+x0")
    assert both.item() == pytest.approx(mle.item() + T.X0_LOSS_MIX * logs["x0"], rel=1e-5)
    assert logs["mle"] == pytest.approx(mle.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown noise loss"):
        T.noise_loss(net, compressor, sch, lq, gt, "l2")
    # fine-tuning starts from the given file's noise network and records it
    cfg2 = _config(folder, tmp_path / "state2", iters=1)
    cfg2.init_noise, cfg2.noise_loss, cfg2.x0_cap, cfg2.late_steps = str(first), "x0", 4.0, 50
    cfg2.noise.lr = cfg2.noise.min_lr = 1e-12
    cfg2.command = "pytest fine-tune"
    out, _ = T.train_noise(cfg2, first, tmp_path / "m2.safetensors")   # the compressor from a model file too
    a, b = load_model(first).noise.state_dict(), load_model(out).noise.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)   # lr ≈ 0: the initial weights come back
    noise_meta = read_metadata(out)["training"]["noise"]
    assert noise_meta["initialised_from"]["file"] == "m.safetensors" and noise_meta["loss"] == "x0"
    assert noise_meta["x0_loss_cap"] == 4.0 and noise_meta["late_steps"] == 50
    assert read_metadata(out)["training"]["command"] == ["pytest", "pytest fine-tune"]
    cfg3 = _config(folder, tmp_path / "state3", iters=1)
    cfg3.init_noise = str(first)
    cfg3.noise_config["width"] = 16
    with pytest.raises(ValueError, match="does not match"):
        T.train_noise(cfg3, comp, tmp_path / "m3.safetensors")


def test_haze_density_mix_draws_each_density_per_window(folder, monkeypatch):
    assert T.parse_densities("light, dense") == ["light", "dense"]
    with pytest.raises(ValueError, match="unknown haze density 'light,thick'"):
        T.make_source(clean=str(folder), density="light,thick")
    drawn = []
    add_haze = haze.add_haze
    monkeypatch.setattr(haze, "add_haze",
                        lambda clean, rng, density: drawn.append(density) or add_haze(clean, rng, density=density))
    src = T.make_source(clean=str(folder), density="light,dense")
    src.sample(np.random.default_rng(0), 32)
    assert len(drawn) == src.pool_size and set(drawn) == {"light", "dense"}
    assert src.description["density"] == "light,dense"
