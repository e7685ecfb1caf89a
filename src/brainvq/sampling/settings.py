"""How codes are drawn: temperatures, nuclei and the background check, resolved from a run's config."""

from __future__ import annotations

from typing import NamedTuple

from brainvq.config import SampleConfig, sampling_problem
from brainvq.errors import RunError


class Sampling(NamedTuple):
    """How codes are drawn: ``temperature`` and ``top_p`` for the bottom (or only) map, and
    ``top_map_temperature`` and ``top_map_top_p`` for the top map of a two-level run, and
    ``background_check``: whether top maps with no background are drawn again
    (:mod:`brainvq.sampling.background`). The last three are None for one level."""

    temperature: float
    top_p: float
    top_map_temperature: float | None = None
    top_map_top_p: float | None = None
    background_check: bool | None = None

    def top_map_differs(self) -> tuple[bool, bool]:
        """Whether the top map's temperature and nucleus differ from the bottom map's (never for one
        level): what titles and file names mention."""
        return (
            self.top_map_temperature not in (None, self.temperature),
            self.top_map_top_p not in (None, self.top_p),
        )


def describe_sampling(sampling: Sampling) -> str:
    """``T=1, top-p 0.9`` (the nucleus only below 1), then ``; top map ...`` for top-map settings
    that differ from the bottom's: for titles and legends."""
    text = f"T={sampling.temperature:g}" + (f", top-p {sampling.top_p:g}" if sampling.top_p < 1 else "")
    temperature_differs, top_p_differs = sampling.top_map_differs()
    top = [f"T={sampling.top_map_temperature:g}"] if temperature_differs else []
    top += [f"top-p {sampling.top_map_top_p:g}"] if top_p_differs else []
    top += ["no background check"] if sampling.background_check is False else []
    return text + (f"; top map {', '.join(top)}" if top else "")


def resolve_sampling(
    config: SampleConfig,
    levels: int,
    temperature: float | None = None,
    top_p: float | None = None,
    top_map_temperature: float | None = None,
    top_map_top_p: float | None = None,
    background_check: bool | None = None,
) -> Sampling:
    """The settings a draw uses: each given value, else the run's ``sample`` config. The top map's follow the bottom's unless set: given, or
    ``sample.top_map_temperature`` / ``sample.top_map_top_p`` in the config; ``background_check``
    defaults to ``sample.top_map_background_check``. All three are ignored in the config of a one-level
    run, and giving them for one is an error. Checks the ranges."""
    temperature = config.temperature if temperature is None else temperature
    top_p = config.top_p if top_p is None else top_p
    if levels == 2:
        top_map_temperature = next(
            v for v in (top_map_temperature, config.top_map_temperature, temperature) if v is not None
        )
        top_map_top_p = next(v for v in (top_map_top_p, config.top_map_top_p, top_p) if v is not None)
        background_check = config.top_map_background_check if background_check is None else background_check
    elif any(v is not None for v in (top_map_temperature, top_map_top_p, background_check)):
        raise RunError(
            "top_map_temperature, top_map_top_p and the background check need a two-level run (model.levels 2)"
        )
    sampling = Sampling(temperature, top_p, top_map_temperature, top_map_top_p, background_check)
    for name, value in sampling._asdict().items():
        if name == "background_check":
            continue
        problem = sampling_problem(name, value)
        if problem:
            raise RunError(f"{name} {problem}")
    return sampling
