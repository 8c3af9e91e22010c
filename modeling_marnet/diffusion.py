"""Cross-modal Diffusion Reconstruction (CDR): noise schedule, x0-predicting denoiser and reverse sampler
(eq. 14-23)."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def make_betas(schedule, num_train_timesteps, beta_start, beta_end):
    """`beta_1..beta_T` as a float64 CPU tensor of shape (T,) (the noise schedule of eq. 14)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64, device="cpu")
    if schedule == "scaled_linear":
        return (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64, device="cpu") ** 2
        )
    if schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal (2021): abar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), betas capped at 0.999.
        steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64, device="cpu") / num_train_timesteps
        abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(
        f"`beta_schedule` must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2', got {schedule!r}."
    )


def inference_timesteps(num_train_timesteps, num_inference_steps):
    """Evenly spaced timesteps from T-1 (pure noise) down to 0, as a (S,) int64 CPU tensor."""
    # Checked at use: the config field may be changed after loading (`model.config.num_inference_steps = 50`).
    if (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, int)
        or not 1 <= num_inference_steps <= num_train_timesteps
    ):
        raise ValueError(
            f"`num_inference_steps` must be an integer in [1, {num_train_timesteps}] (num_train_timesteps), "
            f"got {num_inference_steps!r}."
        )
    if num_inference_steps == 1:
        return torch.tensor([num_train_timesteps - 1])
    steps = torch.linspace(num_train_timesteps - 1, 0, num_inference_steps, dtype=torch.float64, device="cpu")
    return steps.round().long()


def timestep_embedding(timesteps, dim):
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim), half sines then half cosines."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps.float()[:, None] * frequencies[None, :]  # (B, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MARNetMLP(nn.Module):
    """Four linear layers with SiLU between them, the network shape the paper gives `X_theta` (section 3.3.2)."""

    def __init__(self, in_features, hidden_features, out_features):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Linear(in_features, hidden_features),
                nn.Linear(hidden_features, hidden_features),
                nn.Linear(hidden_features, hidden_features),
                nn.Linear(hidden_features, out_features),
            ]
        )
        self.activation = nn.SiLU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.trunk(self.layers[0](hidden)))

    def trunk(self, hidden):
        """(B, hidden) pre-activation of the first layer -> (B, hidden) input of the last layer."""
        for layer in self.layers[1:-1]:
            hidden = layer(self.activation(hidden))
        return self.activation(hidden)


class MARNetDenoiser(nn.Module):
    """`X_theta(x_s^t, t, x_v)`: predicts the clean text feature `x_s^0` (x0-prediction, eq. 19).

    The input is `[x_s^t, emb(t), x_v]` (sinusoidal `emb`). The first layer is linear, so its output splits into
    `W_s x_s^t + W_t emb(t) + (W_v x_v + b)`: the reverse process computes the visual term once per image instead of
    once per step, which is most of the first layer's work (`x_v` is the widest input), and `L_MSE`'s prediction
    reuses it (`prepare`, `scaled_denoise`). `forward` is the definition on the concatenated input.
    """

    def __init__(self, config):
        super().__init__()
        self.text_hidden_size = config.text_hidden_size
        self.timestep_embedding_dim = config.timestep_embedding_dim
        in_features = config.text_hidden_size + config.timestep_embedding_dim + config.vision_hidden_size
        self.mlp = MARNetMLP(in_features, config.denoiser_hidden_size, config.text_hidden_size)

    def forward(
        self, noisy_text_embeds: torch.Tensor, timesteps: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """(B, D_s) noisy feature, (B,) int timesteps, (B, H_v) condition -> (B, D_s) predicted `x_s^0`."""
        time_embeds = timestep_embedding(timesteps, self.timestep_embedding_dim).to(noisy_text_embeds.dtype)
        return self.mlp(torch.cat([noisy_text_embeds, time_embeds, image_embeds], dim=-1))

    def prepare(self, image_embeds):
        """The first layer split by input once per forward, as a [`DenoiserTerms`] whose condition is
        `W_v x_v + b`: (B, H_v) -> (B, hidden). One autograd node however many steps use the blocks (a slice per use
        would each backpropagate a full-size zero gradient)."""
        first = self.mlp.layers[0]
        text, time = self.text_hidden_size, self.timestep_embedding_dim
        text_weight, time_weight, vision_weight = first.weight.split((text, time, first.in_features - text - time), 1)
        return DenoiserTerms(F.linear(image_embeds, vision_weight, first.bias), time_weight, text_weight.t())

    def output_bias(self):
        """`b_out` (D_s,), the last layer's bias, which `scaled_denoise` expects inside its `offset`."""
        return self.mlp.layers[-1].bias

    def scaled_denoise(self, noisy_text_embeds, step_input, scale, offset, text_weight_t):
        """`scale * X_theta(x_s^t, t, x_v) + offset` in two matmuls and the MLP trunk, from the sample-independent
        terms of the first layer: (B, D_s) noisy feature, (B, hidden) step input `W_v x_v + b + W_t emb(t)`, float
        scale, (B or 1, D_s) offset holding `scale * output_bias()`, `W_s^T` (D_s, hidden) of `prepare` ->
        (B, D_s). A whole reverse step (eq. 22-23) is one such call; `scale=1, offset=output_bias()` is `X_theta`."""
        hidden = torch.addmm(step_input, noisy_text_embeds, text_weight_t)  # (B, hidden)
        return torch.addmm(offset, self.mlp.trunk(hidden), self.mlp.layers[-1].weight.t(), alpha=scale)


@dataclass(frozen=True)
class DenoiserTerms:
    """The denoiser's first layer for one batch of conditions, from [`MARNetDenoiser.prepare`]."""

    condition: torch.Tensor  # (B, hidden) W_v x_v + b
    time_weight: torch.Tensor  # (hidden, E) W_t
    text_weight_t: torch.Tensor  # (D_s, hidden) W_s^T


@dataclass(frozen=True)
class ReversePlan:
    """The constants of one reverse process (S steps, width D_s) on one device and dtype; see `reverse_plan`."""

    start: torch.Tensor  # (D_s,) x_T
    time_embeds: torch.Tensor  # (S, E) emb(t_i)
    coefficients: tuple  # S x (c_x0, c_xt) Python floats
    output_scales: torch.Tensor  # (S, 1) c_x0
    noise_terms: torch.Tensor  # (S, D_s) c_noise * z_{i+1}


class MARNetNoiseSchedule:
    """The forward process (eq. 14-15) and reverse-step coefficients (eq. 21-23) built from a `MARNetConfig`.

    Not an `nn.Module` and holds no buffers: everything is a pure function of the config, computed on first use in
    float64 on the CPU, cached per (config values, device, dtype). A model loaded on the meta device, moved, or whose
    `num_inference_steps` is changed after loading therefore always uses the right numbers.
    """

    def __init__(self, config):
        self.config = config
        self._cache = {}

    def _key(self, *extra):
        c = self.config
        return (c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end, *extra)

    def _cached(self, key, make):
        """`make()` once per key. Made outside inference mode even when first asked for under
        `torch.inference_mode()`: training saves these tensors for backward, which inference tensors refuse."""
        if key not in self._cache:
            with torch.inference_mode(False):
                self._cache[key] = make()
        return self._cache[key]

    def alphas_cumprod(self):
        """`abar_t = prod_{s<=t} (1 - beta_s)` (eq. 15), float64 CPU, shape (T,)."""
        c = self.config
        return self._cached(
            self._key("abar"),
            lambda: torch.cumprod(
                1.0 - make_betas(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end), 0
            ),
        )

    def add_noise(self, clean, noise, timesteps):
        """`x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps` (eq. 15): (B, D), (B, D), (B,) -> (B, D)."""
        abar = self.alphas_cumprod().to(clean.device)[timesteps].to(clean.dtype)[:, None]  # (B, 1)
        return abar.sqrt() * clean + (1.0 - abar).sqrt() * noise

    def reverse_coefficients(self, num_inference_steps, sampler):
        """Per reverse step i (timestep t_i, next timestep t_{i+1}, `abar` of the last step taken as 1):

        - ddpm: `x_next = c_x0 * x0_hat + c_xt * x_t + c_noise * z` with the posterior mean of eq. 22 and the
          standard deviation `sqrt(beta_hat)` of eq. 21, where `beta` is respaced to `1 - abar_t / abar_next`.
        - ddim (eta = 0): `x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_hat` with
          `eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)`, rewritten in the same three coefficients.

        Returns the (S,) int64 timesteps and the (S, 3) float64 `(c_x0, c_xt, c_noise)`, both on the CPU.
        """
        return self._cached(
            self._key("reverse", num_inference_steps, sampler),
            lambda: self._make_reverse_coefficients(num_inference_steps, sampler),
        )

    def _make_reverse_coefficients(self, num_inference_steps, sampler):
        timesteps = inference_timesteps(self.config.num_train_timesteps, num_inference_steps)
        abar_all = self.alphas_cumprod()
        abar = abar_all[timesteps]  # (S,)
        abar_next = torch.cat([abar_all[timesteps[1:]], torch.ones(1, dtype=torch.float64)])  # (S,)
        if sampler == "ddpm":
            beta = 1.0 - abar / abar_next
            alpha = 1.0 - beta
            c_x0 = abar_next.sqrt() * beta / (1.0 - abar)  # eq. 22, first term
            c_xt = alpha.sqrt() * (1.0 - abar_next) / (1.0 - abar)  # eq. 22, second term
            c_noise = ((1.0 - abar_next) / (1.0 - abar) * beta).sqrt()  # sqrt(beta_hat), eq. 21
        elif sampler == "ddim":
            c_eps = (1.0 - abar_next).sqrt() / (1.0 - abar).sqrt()
            c_x0 = abar_next.sqrt() - c_eps * abar.sqrt()
            c_xt = c_eps
            c_noise = torch.zeros_like(abar)
        else:
            raise ValueError(f"`sampler` must be 'ddpm' or 'ddim', got {sampler!r}.")
        return timesteps, torch.stack([c_x0, c_xt, c_noise], dim=-1)  # (S,), (S, 3)

    def sampler_noise(self, num_inference_steps, width, device, dtype):
        """The fixed Gaussian draw of the reverse process: (S + 1, width); row 0 is `x_T`, row i + 1 the noise
        added at step i. Seeded by `config.sampler_seed` and shared by every image of every batch."""

        def make():
            generator = torch.Generator(device="cpu").manual_seed(self.config.sampler_seed)
            noise = torch.randn(num_inference_steps + 1, width, generator=generator, dtype=torch.float32, device="cpu")
            return noise.to(device=device, dtype=dtype)

        return self._cached(
            self._key("noise", self.config.sampler_seed, num_inference_steps, width, str(device), dtype), make
        )

    def reverse_plan(self, num_inference_steps, sampler, timestep_embedding_dim, device, dtype):
        """Everything of the reverse process that depends on the config alone, as the sampler's loop reads it: a
        [`ReversePlan`] of the seeded start `x_T`, the timestep embeddings, the step coefficients of
        `reverse_coefficients` (as floats, and `c_x0` as a tensor) and the scaled noise of each step. Cached per
        config values, steps, sampler, seed, device and dtype, so a loop step creates no tensor and no Python list."""
        width = self.config.text_hidden_size
        key = self._key("plan", num_inference_steps, sampler, self.config.sampler_seed, width, timestep_embedding_dim)

        def make():
            timesteps, coefficients = self.reverse_coefficients(num_inference_steps, sampler)  # (S,), (S, 3)
            noise = self.sampler_noise(num_inference_steps, width, device, dtype)  # (S + 1, D_s)
            return ReversePlan(
                start=noise[0],
                time_embeds=timestep_embedding(timesteps.to(device), timestep_embedding_dim).to(dtype),
                coefficients=tuple((c_x0, c_xt) for c_x0, c_xt, _ in coefficients.tolist()),
                output_scales=coefficients[:, :1].to(device=device, dtype=dtype),
                noise_terms=noise[1:] * coefficients[:, 2:].to(device=device, dtype=dtype),
            )

        return self._cached((*key, str(device), dtype), make)


class MARNetCrossModalReconstruction(nn.Module):
    """CDR branch: reconstructs the text feature from the image (`x_CDR`, eq. 2).

    - `L_MSE` (eq. 19), whenever `text_embeds` are given: `x_s` is noised at a random t (eq. 15, t drawn by
      `config.diffusion_timesteps`) and the denoiser predicts `x_s^0`. In `"mlp"` mode (the paper's "+MLP" row) a
      plain MLP maps `x_v -> x_s`, no noise, and its output is `x_CDR`.
    - `x_CDR`: the reverse process (eq. 21-23, or DDIM) from the fixed noise, conditioned on `x_v`, for
      `config.num_inference_steps` steps; the last x0 prediction. Only in training mode with text and
      `config.reconstruction_training="one_step"` is it the one-step prediction from the noised text instead.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.reconstruction == "diffusion":
            self.denoiser = MARNetDenoiser(config)
            self.schedule = MARNetNoiseSchedule(config)
        else:
            self.mapper = MARNetMLP(config.vision_hidden_size, config.denoiser_hidden_size, config.text_hidden_size)

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H_v) visual and optional (B, D_s) text features -> `x_CDR` (B, D_s) and `L_MSE` (or None)."""
        if self.config.reconstruction == "mlp":
            reconstructed_text_embeds = self.mapper(image_embeds)  # x_CDR, (B, D_s)
            loss = F.mse_loss(reconstructed_text_embeds, text_embeds) if text_embeds is not None else None
            return reconstructed_text_embeds, loss
        terms = self.denoiser.prepare(image_embeds)  # shared by L_MSE and the sampler
        if text_embeds is None:
            return self._sample(terms), None
        timesteps = self.training_timesteps(text_embeds.shape[0], text_embeds.device)
        # x_s^t (eq. 15) and emb(t): (B, D_s), (B, E)
        noisy_text_embeds = self.schedule.add_noise(text_embeds, torch.randn_like(text_embeds), timesteps)
        time_embeds = timestep_embedding(timesteps, self.config.timestep_embedding_dim).to(noisy_text_embeds.dtype)
        step_input = terms.condition + F.linear(time_embeds, terms.time_weight)  # (B, hidden)
        predicted_clean = self.denoiser.scaled_denoise(
            noisy_text_embeds, step_input, 1.0, self.denoiser.output_bias(), terms.text_weight_t
        )  # X_theta(x_s^t, t, x_v)
        loss = F.mse_loss(predicted_clean, text_embeds)  # eq. 19
        if self.training and self.config.reconstruction_training == "one_step":
            return predicted_clean, loss
        return self._sample(terms), loss

    def training_timesteps(self, batch_size, device):
        """(B,) timesteps of `L_MSE`: uniform over [0, T), or over the timesteps the sampler visits."""
        if self.config.diffusion_timesteps == "uniform":
            return torch.randint(0, self.config.num_train_timesteps, (batch_size,), device=device)
        visited, _ = self.schedule.reverse_coefficients(self.config.num_inference_steps, self.config.sampler)
        return visited.to(device)[torch.randint(0, len(visited), (batch_size,), device=device)]

    def sample(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Reverse process conditioned on `x_v` (B, H_v) -> (B, D_s); deterministic and batch independent.

        Differentiable: in training (`reconstruction_training="sample"`) gradients flow through the last
        `config.reconstruction_backprop_steps` steps (every step by default)."""
        return self._sample(self.denoiser.prepare(image_embeds))

    def _sample(self, terms):
        """`sample` from the denoiser's [`DenoiserTerms`] of `x_v` -> (B, D_s)."""
        condition = terms.condition  # (B, hidden)
        plan = self.schedule.reverse_plan(
            self.config.num_inference_steps,
            self.config.sampler,
            self.config.timestep_embedding_dim,
            condition.device,
            condition.dtype,
        )
        # Everything that does not depend on the current sample is computed once for all steps.
        time_terms = F.linear(plan.time_embeds, terms.time_weight)  # (S, hidden)
        step_inputs = (condition + time_terms[:, None]).unbind(0)  # S x (B, hidden)
        # c_noise z_{i+1} + c_x0 b_out: the part of each step's offset that does not depend on the sample.
        offsets = torch.addcmul(plan.noise_terms, plan.output_scales, self.denoiser.output_bias()).unbind(0)
        steps = list(zip(plan.coefficients, step_inputs, offsets))
        untracked = len(steps) - self._tracked_steps(len(steps))
        sample = plan.start.expand(condition.shape[0], -1)  # x_T, (B, D_s)
        if untracked:
            with torch.no_grad():
                sample = self._reverse_steps(sample, steps[:untracked], terms.text_weight_t)
        return self._reverse_steps(sample, steps[untracked:], terms.text_weight_t)

    def _tracked_steps(self, num_steps):
        """How many of the last reverse steps gradients flow through: all but in training with a
        `reconstruction_backprop_steps` limit (and all where no gradient is recorded anyway)."""
        limit = self.config.reconstruction_backprop_steps
        if limit is None or not (self.training and torch.is_grad_enabled()):
            return num_steps
        return min(limit, num_steps)

    def _reverse_steps(self, sample, steps, text_weight_t):
        """Applies `x_next = c_x0 * X_theta(x_t, t, x_v) + c_xt * x_t + c_noise * z` (eq. 22-23) for each
        `((c_x0, c_xt), step input (B, hidden), offset (D_s,))` of `steps` to `sample` (B, D_s)."""
        for (c_x0, c_xt), step_input, offset in steps:
            if c_xt:
                offset = torch.add(offset, sample, alpha=c_xt)  # (B, D_s)
            sample = self.denoiser.scaled_denoise(sample, step_input, c_x0, offset, text_weight_t)  # eq. 22-23
        return sample
