"""Dehazing's own restore options: the prior start and the haze recomposition (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass

from ...options import TaskOptions

PRIORS = ("dcp",)          # classic estimates a reverse run can start from (pipeline.PRIOR_ESTIMATES)
DEFAULT_PRIOR_T = 0.5


@dataclass(frozen=True)
class DehazeOptions(TaskOptions):
    """prior      'dcp': each reverse run starts at step round(prior_t · T) from the forward process
                  around the latent of the dark channel prior's output (SDEdit-style); 'none': from
                  noise; None: the model file's ``default_prior``
    prior_t    where the runs start, as a fraction of the schedule's T, in (0, 1] (None: the model
                  file's ``default_prior_t``, else 0.5)
    recompose  rebuild the output from the input with the transmission the restored image implies
                  (``recompose``); None: the model file's ``default_recompose``
    """

    prior: str | None = None
    prior_t: float | None = None
    recompose: bool | None = None

    def __post_init__(self):
        if self.prior is not None and self.prior not in ("none", *PRIORS):
            raise ValueError(f"unknown prior {self.prior!r}; expected one of {', '.join(['none', *PRIORS])}")
        if self.prior_t is not None:
            if isinstance(self.prior_t, bool) or not isinstance(self.prior_t, (int, float)) \
                    or not 0 < self.prior_t <= 1:
                raise ValueError(f"prior_t must be in (0, 1], got {self.prior_t!r}")
        if self.recompose is not None and not isinstance(self.recompose, bool):
            raise ValueError(f"recompose must be True, False or None, got {self.recompose!r}")

    def resolve(self, meta) -> "DehazeOptions":
        """The model file's defaults where these are None. A resolved prior is a name, 'none' for
        none, never None: resolving resolved options again (the Restorer resolves, then the engine)
        must not bring the model file's default prior back over an explicit 'none'."""
        from ...weights import metadata_flag
        prior = self.prior if self.prior is not None else meta.get("default_prior")
        prior = "none" if prior in (None, "", "none") else prior
        if prior != "none" and prior not in PRIORS:
            raise ValueError(f"the model file names an unknown default_prior {prior!r}")
        prior_t = self.prior_t
        if prior_t is None:
            prior_t = float(meta.get("default_prior_t", DEFAULT_PRIOR_T))
        recompose = self.recompose if self.recompose is not None else metadata_flag(meta, "default_recompose")
        return DehazeOptions(prior=prior, prior_t=float(prior_t) if prior != "none" else None,
                             recompose=bool(recompose))

    @property
    def prior_name(self):
        """The prior estimate the runs start from, or None for none (resolved or not)."""
        return None if self.prior in (None, "none") else self.prior
