"""Prompt strings in Sa2VA's Osprey wording: the only place that writes `<IMG_CONTEXT>` counts."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IMG_CONTEXT", "image_prompt", "region_prompt", "regions_header"]

IMG_CONTEXT = "<IMG_CONTEXT>"


def image_prompt(tokens_per_image: int, *, n_tiles: int = 1) -> str:
    """`<img>` + `<IMG_CONTEXT>` x (tiles * tokens) + `</img>`."""
    return "<img>" + IMG_CONTEXT * (tokens_per_image * n_tiles) + "</img>"


def region_prompt(index: int, k: int) -> str:
    """`region{index+1}<vp>` + `<IMG_CONTEXT>` x K + `</vp>` (no space before `<vp>`)."""
    if k < 0:
        raise ValueError(f"K must be >= 0, got {k}")
    return f"region{index + 1}<vp>" + IMG_CONTEXT * int(k) + "</vp>"


def regions_header(ks: Sequence[int]) -> str:
    """"There are N part regions in the picture: region1<vp>...</vp>, ....\\n" (Sa2VA says
    "part regions" even for N = 1)."""
    regions = ", ".join(region_prompt(i, k) for i, k in enumerate(ks))
    return f"There are {len(ks)} part regions in the picture: {regions}.\n"
