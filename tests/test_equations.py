"""The paper's equations (README, "The paper in the code") checked on numbers against direct transcriptions."""

import math

import pytest
import torch

from modeling_marnet.alignment import MARNetProjection
from modeling_marnet.alignment_losses import image_text_contrastive_loss
from modeling_marnet.diffusion import MARNetNoiseSchedule, inference_timesteps, make_betas
from modeling_marnet.fusion import fuse_logits
from tiny_marnet import tiny_config


def test_eq_6_to_8_projection_is_linear_then_leaky_relu():
    projection = MARNetProjection(3, 2, negative_slope=0.2)
    x = torch.tensor([[1.0, -2.0, 0.5]])
    linear = projection.dense(x)
    expected = torch.where(linear >= 0, linear, 0.2 * linear)
    torch.testing.assert_close(projection(x), expected)


def test_eq_5_and_9_to_11_ita_loss():
    torch.manual_seed(0)
    v, s = torch.randn(4, 6), torch.randn(4, 6)
    tau = 0.07

    def sim(a, b):
        return (a @ b) / (a.norm() * b.norm())

    def direction(x, y):
        return (
            sum(
                -math.log(math.exp(sim(x[i], y[i]) / tau) / sum(math.exp(sim(x[i], y[b]) / tau) for b in range(4)))
                for i in range(4)
            )
            / 4
        )

    expected = direction(v, s) + direction(s, v)
    loss, logits = image_text_contrastive_loss(v, s, torch.tensor(math.log(1 / tau)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits.shape == (4, 4)


def test_eq_15_forward_noising():
    config = tiny_config("cdr")
    schedule = MARNetNoiseSchedule(config)
    betas = make_betas("linear", config.num_train_timesteps, config.beta_start, config.beta_end)
    x0, noise, t = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 17, 49])
    abar = torch.tensor([math.prod(1 - b for b in betas[: k + 1].tolist()) for k in t.tolist()])[:, None]
    torch.testing.assert_close(
        schedule.add_noise(x0, noise, t), (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).float()
    )


def test_eq_21_to_23_ddpm_posterior_with_all_timesteps():
    config = tiny_config("cdr", num_inference_steps=50, num_train_timesteps=50)
    schedule = MARNetNoiseSchedule(config)
    betas = make_betas("linear", 50, config.beta_start, config.beta_end)
    abar = torch.cumprod(1 - betas, 0)
    timesteps, coefficients = schedule.reverse_coefficients(50, "ddpm")
    assert timesteps.tolist() == list(range(49, -1, -1))
    for i, t in enumerate(timesteps.tolist()):
        abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        beta_hat = (1 - abar_prev) / (1 - abar[t]) * betas[t]  # eq. 21
        c_x0 = abar_prev.sqrt() * betas[t] / (1 - abar[t])  # eq. 22
        c_xt = (1 - betas[t]).sqrt() * (1 - abar_prev) / (1 - abar[t])
        torch.testing.assert_close(coefficients[i], torch.stack([c_x0, c_xt, beta_hat.sqrt()]))
    # The last step returns the x0 prediction itself.
    torch.testing.assert_close(coefficients[-1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_ddim_step_reproduces_x0_and_eps_decomposition():
    config = tiny_config("cdr", sampler="ddim")
    schedule = MARNetNoiseSchedule(config)
    abar = schedule.alphas_cumprod()
    timesteps, coefficients = schedule.reverse_coefficients(5, "ddim")
    x_t, x0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    t, t_next = timesteps[0], timesteps[1]
    eps = (x_t - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
    expected = abar[t_next].sqrt() * x0 + (1 - abar[t_next]).sqrt() * eps
    torch.testing.assert_close(coefficients[0, 0] * x0 + coefficients[0, 1] * x_t, expected)
    assert coefficients[:, 2].abs().max() == 0


def test_inference_timesteps_span_the_whole_chain():
    assert inference_timesteps(1000, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert inference_timesteps(1000, 1).tolist() == [999]
    with pytest.raises(ValueError, match=r"`num_inference_steps` must be an integer in \[1, 1000\]"):
        inference_timesteps(1000, 0)


def test_cosine_schedule_matches_its_definition():
    betas = make_betas("squaredcos_cap_v2", 10, 1e-4, 0.02)
    f = [math.cos((k / 10 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(11)]
    expected = [min(1 - f[k + 1] / f[k], 0.999) for k in range(10)]
    assert betas.tolist() == pytest.approx(expected)


def test_sum_and_harmonic_fusions():
    a, b = torch.tensor([[2.0, -1.0, 30.0]]), torch.tensor([[0.5, -3.0, 40.0]])
    torch.testing.assert_close(fuse_logits(a, b, "sum"), torch.log(torch.sigmoid(a + b)))
    z = torch.sigmoid(a) * torch.sigmoid(b)
    torch.testing.assert_close(fuse_logits(a, b, "hm"), torch.log(z / (1 + z)))
    assert torch.isfinite(fuse_logits(torch.full((1, 2), -200.0), torch.full((1, 2), -200.0), "hm")).all()


def reference_sample(cdr, x_v, steps, sampler):
    """The reverse process transcribed step by step: the concatenated denoiser input, eq. 22-23 with the seeded
    noise, no precomputed term."""
    width = cdr.config.text_hidden_size
    noise = torch.randn(steps + 1, width, generator=torch.Generator().manual_seed(cdr.config.sampler_seed))
    timesteps, coefficients = cdr.schedule.reverse_coefficients(steps, sampler)
    x = noise[0].expand(x_v.shape[0], -1)
    for i, t in enumerate(timesteps):
        x0 = cdr.denoiser(x, t.expand(x_v.shape[0]), x_v)  # X_theta(x_s^t, t, x_v) on the concatenated input
        c_x0, c_xt, c_noise = coefficients[i].float()
        x = c_x0 * x0 + c_xt * x + c_noise * noise[i + 1]  # eq. 23
    return x


# The default heads (256-wide denoiser, 128-d timestep embedding, T = 1000, 10 DDPM steps) and other samplers and
# lengths on the tiny heads.
SAMPLE_SETTINGS = [
    (
        "full-size",
        {
            "text_hidden_size": 384,
            "denoiser_hidden_size": 256,
            "timestep_embedding_dim": 128,
            "num_train_timesteps": 1000,
            "num_inference_steps": 10,
            "projection_dim": 256,
        },
    ),
    ("ddim", {"sampler": "ddim"}),
    ("ddpm-50", {"num_inference_steps": 50}),
    ("ddim-1", {"sampler": "ddim", "num_inference_steps": 1}),
]


@pytest.mark.parametrize("overrides", [fields for _, fields in SAMPLE_SETTINGS], ids=[n for n, _ in SAMPLE_SETTINGS])
def test_reverse_process_is_the_step_formula_applied_from_the_seeded_noise(overrides):
    torch.manual_seed(0)
    from modeling_marnet import MARNetForImageClassification

    model = MARNetForImageClassification(tiny_config("cdr", **overrides)).eval()
    cdr = model.marnet.reconstruction
    with torch.no_grad():  # weights of unit gain: the initial std of 0.02 would hide a wrong term under the tolerance
        for parameter in cdr.denoiser.parameters():
            parameter.normal_(0.0, parameter.shape[-1] ** -0.5)
    x_v = torch.randn(3, 32)
    with torch.no_grad():
        expected = reference_sample(cdr, x_v, model.config.num_inference_steps, model.config.sampler)
        torch.testing.assert_close(cdr.sample(x_v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("diffusion_timesteps", ["uniform", "inference"])
def test_eq_19_reconstruction_loss_is_the_mse_of_the_x0_prediction_from_the_noised_text(diffusion_timesteps):
    from modeling_marnet import MARNetForImageClassification

    config = tiny_config("cdr", reconstruction_training="one_step", diffusion_timesteps=diffusion_timesteps)
    cdr = MARNetForImageClassification(config).train().marnet.reconstruction
    with torch.no_grad():  # weights of unit gain, so that a wrong term is not lost under the tolerance
        for parameter in cdr.denoiser.parameters():
            parameter.normal_(0.0, parameter.shape[-1] ** -0.5)
    x_v, x_s = torch.randn(4, 32), torch.randn(4, 16)
    torch.manual_seed(3)
    predicted, loss = cdr(x_v, x_s)
    torch.manual_seed(3)  # the same t and eps
    t = cdr.training_timesteps(4, x_s.device)
    x_t = cdr.schedule.add_noise(x_s, torch.randn_like(x_s), t)  # eq. 15
    expected = cdr.denoiser(x_t, t, x_v)  # X_theta(x_s^t, t, x_v) on the concatenated input
    torch.testing.assert_close(predicted, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, torch.mean((expected - x_s) ** 2), rtol=1e-5, atol=1e-6)
