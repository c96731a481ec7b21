"""Bokeh's own restore options: the source and target lenses and the disparity (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass

from ..options import TaskOptions

LENS_HELP = ("lens names like Canon50mmf1.8BS → -18, Sony50mmf16.0BS → 160, as in the NTIRE 2023 meta files, "
             "or the encoded numbers")


def lens_value(lens):
    """The reference's numeric encoding of a lens name (NTIRE 2023 bokeh meta files).

    'Canon50mmf1.8BS' → −18 (Canon: minus the f-number) and 'Sony50mmf16.0BS' → 160, i.e. the
    f-number × 10 with the sign telling the lens maker. A plain number is taken as already encoded.
    """
    if isinstance(lens, (int, float)) and not isinstance(lens, bool):
        return float(lens)
    text = str(lens).strip()
    try:
        return float(text)
    except ValueError:
        pass
    lower = text.lower()
    if "mmf" not in lower:
        raise ValueError(f"cannot read lens {lens!r}: expected a name like 'Canon50mmf1.8BS' or a number")
    number = lower.split("mmf", 1)[1].rstrip("bs")
    try:
        f_number = float(number)
    except ValueError:
        raise ValueError(f"cannot read the f-number of lens {lens!r}") from None
    if lower.startswith("canon"):
        return -f_number * 10
    if lower.startswith("sony"):
        return f_number * 10
    raise ValueError(f"unknown lens maker in {lens!r}: the reference encodes Canon (negative) and Sony (positive)")


@dataclass(frozen=True)
class LensOptions(TaskOptions):
    """src_lens, tgt_lens  lens names or encoded numbers (``lens_value``); disparity  the meta file's
    number. All three are required: the bokeh network is conditioned on them."""

    src_lens: object = None
    tgt_lens: object = None
    disparity: object = None

    def __post_init__(self):
        if self.src_lens is None or self.tgt_lens is None or self.disparity is None:
            raise ValueError(f"the bokeh task needs src_lens, tgt_lens and disparity ({LENS_HELP})")
        lens_value(self.src_lens), lens_value(self.tgt_lens)
        try:
            float(self.disparity)
        except (TypeError, ValueError):
            raise ValueError(f"disparity must be a number, got {self.disparity!r}") from None

    @property
    def values(self):
        """(src, tgt, disparity) as the numbers the network takes."""
        return lens_value(self.src_lens), lens_value(self.tgt_lens), float(self.disparity)
