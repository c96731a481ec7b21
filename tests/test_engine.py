"""The tiled engine: tile grids, exact tiled compressor, position-keyed noise, tiled = whole."""
import numpy as np
import pytest
import torch

from tilediff import engine
from tilediff.engine.rng import PositionalNoise, PrefetchingNoise, region_noise
from tilediff.restorer import Restorer
from tilediff.engine.tiled_compressor import TiledCompressor
from tilediff.options import RestoreOptions
from tilediff.tiling import Tile, blend_window, grid, partition, tile_starts
from tilediff.weights import convert


# ---- tile grids -------------------------------------------------------------------------------

@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (517, 64, 16), (64, 64, 8), (65, 64, 8),
                                                   (1000, 96, 0), (20, 64, 8)])
def test_tiles_cover_evenly_without_slivers(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    gaps = np.diff(starts)
    assert all(g <= size - min(overlap, size - 1) for g in gaps)  # at least the asked overlap
    if len(gaps) > 1:
        assert gaps.max() - gaps.min() <= 1                         # spread evenly


def test_aligned_starts_are_multiples():
    starts = tile_starts(160, 48, 12, align=16)
    assert all(s % 16 == 0 for s in starts) and starts[-1] == 112


def test_blend_weights_are_positive_and_ramp_only_inside():
    tiles = grid(50, 70, 32, 8)
    weight_sum = torch.zeros(50, 70)
    for t in tiles:
        win = blend_window(t, tiles, 50, 70)
        assert win.shape == t.shape and (win > 0).all() and win.max() <= 1
        weight_sum[t.slices] += win
    assert (weight_sum > 0.99).all()
    corner = blend_window(tiles[0], tiles, 50, 70)
    assert corner[0, 0] == 1  # no ramp at the canvas edge


def test_partition_covers_exactly_once():
    count = torch.zeros(37, 23)
    for t in partition(37, 23, 8):
        count[t.slices] += 1
    assert (count == 1).all()


def test_partition_cuts_tiles_of_one_size():
    """As many tiles as the tile size needs, their sides differing by one at most (no narrow last column)."""
    tiles = partition(37, 23, 8)
    assert len(tiles) == 5 * 3
    assert {t.shape[0] for t in tiles} == {7, 8} and {t.shape[1] for t in tiles} == {7, 8}
    assert partition(16, 16, 8) == [Tile(0, 8, 0, 8), Tile(0, 8, 8, 16), Tile(8, 16, 0, 8), Tile(8, 16, 8, 16)]
    assert partition(3, 5, 8) == [Tile(0, 3, 0, 5)]


# ---- position-keyed noise ----------------------------------------------------------------------

def test_region_noise_equals_the_same_region_of_the_whole_canvas():
    whole = region_noise(7, 3, 4, 0, 150, 0, 200)
    part = region_noise(7, 3, 4, 37, 101, 63, 190)
    assert torch.equal(part, whole[:, 37:101, 63:190])
    assert not torch.equal(region_noise(7, 4, 4, 0, 150, 0, 200), whole)   # another step
    assert not torch.equal(region_noise(8, 3, 4, 0, 150, 0, 200), whole)   # another seed
    assert abs(whole.mean().item()) < 0.01 and abs(whole.std().item() - 1) < 0.01


def test_positional_noise_source_is_deterministic():
    like = torch.empty(1, 8, 40, 70)
    assert torch.equal(PositionalNoise(3)(5, like), PositionalNoise(3)(5, like))


def test_prefetching_noise_gives_the_same_values_in_and_out_of_order():
    like = torch.empty(2, 4, 70, 90)
    plain = PositionalNoise(3, stream=1)
    prefetching = PrefetchingNoise(PositionalNoise(3, stream=1), "cpu", workers=3)   # bands of 64 rows
    try:
        for t in (0, 6, 5, 4, 2, 1):   # 0 (the start) and 2 are not the prefetched step
            assert torch.equal(prefetching(t, like), plain(t, like)), t
        assert prefetching.pending is None   # nothing is drawn after step 1
        assert torch.equal(prefetching(3, like[:1]), plain(3, like[:1]))   # another shape
    finally:
        prefetching.close()


# ---- tiled compressor is exact --------------------------------------------------------------

@pytest.mark.parametrize("size, tile, keep", [
    ((90, 123), 5, False), ((90, 123), 64, True), ((37, 61), 2, True), ((37, 61), 3, False),
    ((7, 7), 1, True), ((1, 40), 2, False), ((45, 9), 1, False)])
def test_tiled_compressor_equals_whole(golden_net, size, tile, keep):
    net = golden_net("unet_dehaze")
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
    with torch.no_grad():
        latent, hidden = net.encode(image)
        other = latent + 0.3 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
        ref = net.decode(other, hidden)
        tiled = TiledCompressor(net, torch.device("cpu"), tile=tile, keep_skips=keep)
        canvas = tiled.encode(image)
        out = tiled.decode(other, canvas, image)
    assert out.shape == ref.shape == (1, 3, *size)
    assert (canvas.latent.whole() - latent).abs().max() < 1e-5
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(1, 6, 9, 14), (2, 6, 1, 1), (1, 6, 2, 5)])
def test_upsample_as_phase_convolutions_equals_the_module(shape):
    """The tiled decoder's ×2 upsampling (four 2×2 convolutions interleaved) gives nn's numbers."""
    from tilediff.engine.tiled_compressor import upsample_conv
    from tilediff.models.compressor import Upsample
    torch.manual_seed(3)
    up = Upsample(6, 4)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(shape[0], 2, 2 * shape[2], 2 * shape[3])
    with torch.no_grad():
        ref, out, joined = up(x), upsample_conv(up, x), upsample_conv(up, x, skip)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert torch.equal(joined, torch.cat([out, skip], 1))


# ---- whole = tiled for the full restoration ---------------------------------------------------

@pytest.fixture(scope="module")
def zero_noise_restorer(golden_dir, tmp_path_factory):
    """golden nafnet_latent_small with its ending conv zeroed (ε ≡ 0), paired with unet_dehaze."""
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path_factory.mktemp("m") / "zero.safetensors")
    r = Restorer("dehaze", weights=path)
    r.model.noise.ending.weight.data.zero_()
    r.model.noise.ending.bias.data.zero_()
    return r


@pytest.mark.parametrize("sampler,prior", [("ode", "none"), ("sde", "none"), ("sde", "dcp")])
def test_tiled_restoration_equals_whole_with_a_zero_noise_model(zero_noise_restorer, sampler, prior):
    image = np.random.default_rng(0).random((389, 517, 3)).astype(np.float32)
    whole = zero_noise_restorer.restore(image, steps=2, sampler=sampler, seed=3, mode="whole", prior=prior)
    for tile, overlap in [(16, 4), (24, 10)]:
        stats = {}
        tiled = zero_noise_restorer.restore(image, steps=2, sampler=sampler, seed=3, mode="tiled", tile=tile,
                                            overlap=overlap, stats=stats, prior=prior)
        assert stats["plan"].noise_mode == "tiled" and stats["plan"].compressor_mode == "tiled"
        assert np.abs(whole - tiled).max() <= 1e-4, (tile, overlap)


def test_plan_and_progress_are_reported(zero_noise_restorer):
    events = []
    stats = {}
    image = np.random.default_rng(1).random((100, 140, 3)).astype(np.float32)
    zero_noise_restorer.restore(image, steps=3, mode="tiled", tile=16, overlap=4, stats=stats,
                                progress=lambda stage, done, total: events.append((stage, done, total)))
    plan = stats["plan"]
    text = plan.describe()
    assert "encode:" in text and "sample:" in text and "expected peak memory" in text
    stages = {e[0] for e in events}
    assert {"encode", "sample", "decode"} <= stages
    sample_events = [e for e in events if e[0] == "sample"]
    assert sample_events[-1][1] == sample_events[-1][2]  # reaches its total


def test_small_budget_picks_tiles_and_recomputed_skips(zero_noise_restorer):
    model = zero_noise_restorer.model
    big = engine.make_plan(model, (4000, 6000), 3, RestoreOptions(memory_budget=4 << 30), torch.device("cpu"))
    assert big.compressor_mode == "tiled" and big.skips in ("fp16", "recompute")
    assert big.expected_peak <= 4 << 30
    tiny = engine.make_plan(model, (4000, 6000), 3, RestoreOptions(memory_budget=1 << 30), torch.device("cpu"))
    assert tiny.skips == "recompute" or tiny.where["skips"] == "disk"      # recomputed, or in a scratch file


def test_model_file_noise_tile_is_the_auto_default(zero_noise_restorer):
    model = zero_noise_restorer.model
    cpu = torch.device("cpu")
    before = dict(model.metadata)
    try:
        model.metadata.update(noise_tile=32, noise_overlap=16)
        auto = engine.make_plan(model, (480, 640), 3, RestoreOptions(), cpu)
        assert (auto.noise_mode, auto.noise_tile, auto.noise_overlap) == ("tiled", 32, 16)
        assert auto.noise_tiles == 12 and auto.noise_tile_from_model            # 60x80 latent: 3 x 4 tiles
        assert "the size the model was trained on" in auto.describe()
        whole = engine.make_plan(model, (480, 640), 3, RestoreOptions(mode="whole"), cpu)
        assert whole.noise_mode == "whole"                                      # the reference stays the reference
        mine = engine.make_plan(model, (480, 640), 3, RestoreOptions(tile=48, overlap=8), cpu)
        assert (mine.noise_tile, mine.noise_overlap, mine.noise_tile_from_model) == (48, 8, False)
        out = zero_noise_restorer.restore(np.full((40, 56, 3), 0.5, np.float32), steps=2)
        assert out.shape == (40, 56, 3) and np.isfinite(out).all()            # canvas smaller than the tile
    finally:
        model.metadata.clear()
        model.metadata.update(before)


def test_tiny_images_restore(zero_noise_restorer):
    for shape in [(1, 37, 3), (7, 7, 3), (1, 1, 3)]:
        out = zero_noise_restorer.restore(np.full(shape, 0.5, np.float32), steps=1)
        assert out.shape == shape and np.isfinite(out).all()


def test_out_of_memory_halves_the_tiles_and_retries(zero_noise_restorer, monkeypatch):
    """A CUDA out-of-memory error in the noise network or the compressor halves that stage's tile."""
    model = zero_noise_restorer.model
    noise_forward = model.noise.forward
    decoder_conv = model.compressor.final_conv.forward

    def small_noise_only(x, *args, **kwargs):
        if x.shape[-1] > 24:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return noise_forward(x, *args, **kwargs)

    def small_decode_only(x):
        if x.shape[-1] > 200:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return decoder_conv(x)

    monkeypatch.setattr(model.noise, "forward", small_noise_only)
    monkeypatch.setattr(model.compressor.final_conv, "forward", small_decode_only)
    image = np.random.default_rng(2).random((200, 300, 3)).astype(np.float32)
    stats = {}
    out = zero_noise_restorer.restore(image, steps=2, sampler="ode", stats=stats)
    monkeypatch.undo()
    plan = stats["plan"]
    assert plan.noise_mode == "tiled" and plan.noise_tile <= 24
    assert plan.compressor_tile * 8 <= 200
    whole = zero_noise_restorer.restore(image, steps=2, sampler="ode", mode="whole")
    assert np.abs(out - whole).max() <= 1e-4   # still exact: the zero-noise model makes tiling invisible


def test_several_samples_average_the_final_latents_of_independent_runs(golden_dir, tmp_path):
    from tilediff import sde
    from tilediff.engine.rng import START_STEP
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path / "m.safetensors")
    r = Restorer("dehaze", weights=path)
    image = np.random.default_rng(2).random((40, 56, 3)).astype(np.float32)
    one = r.restore(image, steps=3, sampler="sde", seed=5, mode="whole")
    assert np.array_equal(r.restore(image, steps=3, sampler="sde", seed=5, mode="whole", samples=1), one)
    events = []
    two = r.restore(image, steps=3, sampler="sde", seed=5, mode="whole", samples=2,
                    progress=lambda stage, done, total: events.append((stage, done, total)))
    # by hand: run k draws from noise stream k; the decoder gets the mean of the two final latents
    model = r.model
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        mu, hidden = model.compressor.encode(x)
        sch = engine.schedule_for(model)          # the model's T = 100 schedule; 3 of its steps
        noise_fn = engine.whole_noise_fn(model.noise, mu, torch.device("cpu"), torch.float32)
        finals = []
        for stream in (0, 1):
            noise = PositionalNoise(5, stream=stream)
            start = sde.start_state(sch, mu, noise(START_STEP, mu))
            finals.append(sde.sample(noise_fn, start, mu, sch, "sde", noise, steps=3))
        expected = model.compressor.decode((finals[0] + finals[1]) / 2, hidden).clamp(0, 1)[0].permute(1, 2, 0)
    np.testing.assert_allclose(two, expected.numpy(), atol=1e-5)
    assert np.abs(two - one).max() > 1e-3
    sample_events = [e for e in events if e[0] == "sample"]
    assert sample_events[-1] == ("sample", 6, 6)   # both runs' steps in one progress total
    with pytest.raises(ValueError, match="samples must be at least 1"):
        r.restore(image, steps=3, mode="whole", samples=0)


def test_ensemble_runs_the_samples_in_four_orientations(golden_dir, tmp_path):
    """With ensemble, run k sees μ flipped / transposed (engine.ORIENTATIONS[k mod 4]), draws noise
    stream k on that canvas, and its final latent is turned back before the average (non-square
    latent, so a missing or wrong inverse fails)."""
    from tilediff import sde
    from tilediff.engine.rng import START_STEP
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path / "m.safetensors")
    r = Restorer("dehaze", weights=path)
    image = np.random.default_rng(4).random((40, 56, 3)).astype(np.float32)
    plain = r.restore(image, steps=3, sampler="ode", seed=2, mode="whole", samples=4)
    assert np.array_equal(r.restore(image, steps=3, sampler="ode", seed=2, mode="whole", samples=1, ensemble=True),
                          r.restore(image, steps=3, sampler="ode", seed=2, mode="whole", samples=1))
    ens = r.restore(image, steps=3, sampler="ode", seed=2, mode="whole", samples=4, ensemble=True)
    model = r.model
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    flips = [lambda t: t, lambda t: t.flip(-1), lambda t: t.transpose(-1, -2),
             lambda t: t.flip(-1).transpose(-1, -2)]
    unflips = [lambda t: t, lambda t: t.flip(-1), lambda t: t.transpose(-1, -2),
               lambda t: t.transpose(-1, -2).flip(-1)]
    with torch.no_grad():
        mu, hidden = model.compressor.encode(x)
        assert mu.shape[-2] != mu.shape[-1]
        sch = engine.schedule_for(model)
        finals = []
        for k in range(4):
            mu_k = flips[k](mu).contiguous()
            noise = PositionalNoise(2, stream=k)
            fn = engine.whole_noise_fn(model.noise, mu_k, torch.device("cpu"), torch.float32)
            start = sde.start_state(sch, mu_k, noise(START_STEP, mu_k))
            finals.append(unflips[k](sde.sample(fn, start, mu_k, sch, "ode", noise, steps=3)))
        expected = model.compressor.decode(sum(finals) / 4, hidden).clamp(0, 1)[0].permute(1, 2, 0)
    np.testing.assert_allclose(ens, expected.numpy(), atol=1e-5)
    assert np.abs(ens - plain).max() > 1e-3
    assert engine.ORIENTATIONS[3][2](engine.ORIENTATIONS[3][1](mu)).equal(mu)   # inverse ∘ forward = id


def test_prior_start_refines_the_latent_of_a_classic_estimate(golden_dir, tmp_path):
    """prior='dcp': each run starts at round(prior_t × T) of the model's schedule from the forward process
    around the latent of the dark-channel-prior image (in the run's orientation), and takes ``steps``
    network evaluations from there down."""
    from tilediff import sde
    from tilediff.tasks.dehaze.dcp import dark_channel_prior
    from tilediff.engine.rng import START_STEP
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path / "m.safetensors")
    r = Restorer("dehaze", weights=path)
    image = np.random.default_rng(6).random((40, 56, 3)).astype(np.float32)
    events = []
    got = r.restore(image, steps=4, sampler="ode", seed=1, mode="whole", samples=2, ensemble=True, prior="dcp",
                    prior_t=0.5, progress=lambda stage, done, total: events.append((stage, done, total)))
    model = r.model
    as_canvas = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        mu, hidden = model.compressor.encode(as_canvas(image))
        guess, _ = model.compressor.encode(as_canvas(dark_channel_prior(image)))
        sch = engine.schedule_for(model)
        finals = []
        for k in (0, 1):
            _, forward, inverse = engine.ORIENTATIONS[k]
            mu_k, guess_k = forward(mu).contiguous(), forward(guess).contiguous()
            noise = PositionalNoise(1, stream=k)
            fn = engine.whole_noise_fn(model.noise, mu_k, torch.device("cpu"), torch.float32)
            start = sde.noisy_state(sch, guess_k, mu_k, 50, noise(START_STEP, mu_k))   # 0.5 × T
            finals.append(inverse(sde.sample(fn, start, mu_k, sch, "ode", noise, start_step=50, steps=4)))
        expected = model.compressor.decode(sum(finals) / 2, hidden).clamp(0, 1)[0].permute(1, 2, 0)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert [e for e in events if e[0] == "sample"][-1] == ("sample", 8, 8)   # 2 runs × 4 steps
    plain = r.restore(image, steps=4, sampler="ode", seed=1, mode="whole", samples=2, ensemble=True)
    assert np.abs(got - plain).max() > 1e-3
    with pytest.raises(ValueError, match="unknown prior"):
        r.restore(image, steps=2, prior="clahe")
    with pytest.raises(ValueError, match="prior_t must be in"):
        r.restore(image, steps=2, prior="dcp", prior_t=0)
    with pytest.raises(ValueError, match="start_step must be in"):
        sde.sample(lambda x, t: x, mu, mu, sch, "ode", start_step=101)


def test_an_explicit_no_prior_overrides_the_model_files_default_prior(golden_dir, tmp_path, monkeypatch):
    """A model file whose default is the DCP start: prior='none' runs from noise at T, through
    every entry point (the Restorer resolves the options, the engine resolves them again; a
    resolved 'no prior' once read as 'not given' and brought the file's default back)."""
    from tilediff import sde
    from tilediff.io import read_image, write_image
    from tilediff.weights import update_metadata
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path / "m.safetensors")
    plain = Restorer("dehaze", weights=path)
    image = np.random.default_rng(7).random((40, 56, 3)).astype(np.float32)
    kw = dict(steps=3, sampler="ode", seed=2, mode="whole", samples=1, ensemble=False, recompose=False)
    from_noise = plain.restore(image, **kw)
    update_metadata(path, default_prior="dcp", default_prior_t="0.3")
    r = Restorer("dehaze", weights=path)
    assert r.default_prior == ("dcp", 0.3)
    resolved = r.options(prior="none")
    assert resolved.task_options.prior == "none" and resolved.resolve(r.model).task_options.prior == "none"
    starts = []
    real_sample = sde.sample
    monkeypatch.setattr(sde, "sample", lambda *a, **k: starts.append(k["start_step"]) or real_sample(*a, **k))
    no_prior = r.restore(image, prior="none", **kw)
    default = r.restore(image, **kw)
    monkeypatch.undo()
    assert starts == [100, 30]
    np.testing.assert_array_equal(no_prior, from_noise)
    assert np.abs(default - from_noise).max() > 1e-3
    out = tmp_path / "out.png"
    write_image(tmp_path / "in.png", image)
    r.restore_file(tmp_path / "in.png", out, prior="none", **kw)
    expected = plain.restore(tmp_path / "in.png", **kw)
    np.testing.assert_allclose(read_image(out).rgb, np.round(expected * 255) / 255, atol=1 / 255 + 1e-6)


def test_linear_attention_sums_do_not_overflow_in_float16():
    """The compressor's global attention sums grow with the number of positions (Σ e^(k−max) = n when
    k is flat); kept in float16 they overflowed past 65504 positions and a 16-bit restoration of a
    6000 × 4000 image came out NaN (found on an H200). They are float32 now."""
    from tilediff.models.compressor import LinearAttention
    torch.manual_seed(0)
    att = LinearAttention(16).eval()
    with torch.no_grad():
        att.to_qkv.weight[128:256] = 0                                       # k ≡ 0
        att.to_qkv.weight[256:384] = att.to_qkv.weight[256:384].abs()        # v > 0 on positive inputs
    x = torch.rand(1, 16, 300, 300) + 0.5                                    # 90 000 positions
    with torch.no_grad():
        ref = att.float()(x)
        parts = att.half().reduce(x.half())
        half = att(x.half()).float()
        merged = att.merge([att.reduce(x.half()[..., :150, :]), att.reduce(x.half()[..., 150:, :])])
        tiled = att.apply(x.half(), merged).float()
    assert parts[1].dtype == torch.float32 and float(parts[1].max()) == 90000
    assert torch.isfinite(half).all() and torch.isfinite(tiled).all()
    assert (half - ref).abs().max() < 0.5 and (tiled - half).abs().max() < 1e-2
