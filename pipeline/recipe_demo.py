"""A miniature of a whole recipe (`configs/recipes/<name>/`): every dataset synthesised in its
real on-disk format, built with the recipe's own build configs (the raw root replaced by the
synthetic one, plus the few options where the synthetic layout differs from Sa2VA's `data/`
tree), and the recipe's mixtures pointed at those builds; then one epoch of each mixture is
served and counted per source, intended (repeat x size) against achieved.

    python -m pipeline.recipe_demo --out /tmp/recipe        # prints the proportions tables
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from sa2va_shards.build.run import run_build
from sa2va_shards.config import load_config
from sa2va_shards.loader.dataset import LoaderConfig, ShardDataset
from sa2va_shards.loader.mixture import load_mixture
from sa2va_shards.synth import synth_dataset

__all__ = ["RECIPE", "SYNTH", "ProportionRow", "build_miniature", "proportions"]

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "sa2va_4b_v1"
#: reader format -> (synthetic items, reader options the synthetic layout needs in place of
#: the recipe's): the synth writes `images/` and `refs(unc).p` for RefCOCO, SA-V clips at its
#: root, ReVOS frames under `JPEGImages/` (the release; Sa2VA's copy has them at the root);
#: every other synth writes the layout the recipe names.
SYNTH: dict[str, tuple[int, dict]] = {
    "refcoco": (6, {"images": "images", "variant": "unc"}),
    "llava": (12, {}),
    "mevis": (3, {}), "revos": (3, {"frames_dir": "JPEGImages"}), "refytvos": (3, {}),
    "chatunivi": (3, {}),
    "sav": (3, {"videos": "."}),
    "gcg": (5, {}),
    "osprey": (10, {}),
}


#: mixture -> sources whose Sa2VA dataset reports its sampler lengths without its repeats
#: (v1: the RVOS classes, VideoSAM2Dataset, VideoChatUniViDataset; v2: `Sa2VA03RefVOS`), so
#: xtuner's sampler only reaches the first (N - D) positions of the ConcatDataset.
SA2VA_SHORT_LENGTHS: dict[str, frozenset[str]] = {
    "v1": frozenset({"mevis", "revos", "refytvos", "ref_sav", "chat_univi"}),
    "v2_in30_8b": frozenset({"revos", "mevis", "refytvos", "ref_sav"}),
}


@dataclass(frozen=True)
class ProportionRow:
    """One source of a mixture: its build's size, the repeat, intended and served shares."""

    name: str
    size: int
    repeat: float
    intended: int
    served: int
    skipped: int

    #: expected draws of this source under Sa2VA's own sampler (`sa2va_sampler`).
    sa2va: float = 0.0

    def share(self, total: float, of: str = "served") -> float:
        return getattr(self, of) / total if total else 0.0


def sa2va_sampler(rows: list[ProportionRow], short: frozenset[str]) -> list[float]:
    """Expected draws per source in one epoch of Sa2VA's sampler over the same sizes, sources
    in ConcatDataset order: the sampler shuffles M = sum of the reported lengths positions
    (a `short` source reports its size, not size x repeat) and pads them to N = sum of the
    real lengths by repeating its list's start, so each of the first M positions of the
    concatenation is drawn N / M times on average and the last N - M never."""
    n = sum(r.intended for r in rows)
    m = sum(r.size if r.name in short else r.intended for r in rows)
    draws, start = [], 0
    for r in rows:
        reachable = max(0, min(r.intended, m - start))
        draws.append(reachable * n / m if m else 0.0)
        start += r.intended
    return draws


def _build_all(recipe: Path, out: Path) -> dict[str, Path]:
    """dataset name -> build folder, every build config of the recipe on synthetic data."""
    raws: dict[str, Path] = {}
    builds = {}
    for path in sorted(recipe.glob("*.yaml")):
        cfg = load_config(path)
        fmt = cfg.reader.format
        n, overrides = SYNTH[fmt]
        if fmt not in raws:  # one synthetic set per format (RefCOCO/+/g share one)
            raws[fmt] = synth_dataset(fmt, out / "raw" / fmt, n_items=n, seed=1)
        reader = dataclasses.replace(cfg.reader, root=str(raws[fmt]),
                                     options={**cfg.reader.options, **overrides})
        cfg = dataclasses.replace(cfg, reader=reader, out=str(out / "shards"),
                                  shards=dataclasses.replace(cfg.shards, samples_per_shard=4))
        builds[cfg.dataset] = run_build(cfg, runner="serial", progress=False).build_dir
    return builds


def build_miniature(out: Path, *, recipe: Path = RECIPE) -> dict[str, Path]:
    """Build the recipe's datasets on synthetic data under `out` and write its mixtures
    (`mix/*.yaml`) there, pointed at those builds. Returns mixture name -> YAML path."""
    builds = _build_all(recipe, Path(out))
    mixes = {}
    (Path(out) / "mix").mkdir(parents=True, exist_ok=True)
    for path in sorted((recipe / "mix").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for s in doc["sources"]:
            s["build"] = str(builds[Path(s["build"]).name].parent)  # the dataset's `latest`
        target = Path(out) / "mix" / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        mixes[path.stem] = target
    return mixes


def proportions(mixture: Path, *, seed: int = 0,
                short: frozenset[str] = frozenset()) -> list[ProportionRow]:
    """One epoch of the mixture served (task per source, full masks), counted per source;
    `short`: see `sa2va_sampler`."""
    mix = load_mixture(mixture)
    cfg = LoaderConfig(task="mixed", gt_masks="full", seed=seed)
    ds = ShardDataset(mixture, cfg)
    served = Counter(s["source"] for s in ds)
    rows = []
    for src in mix.sources:
        task = (src.loader or {}).get("task", "mixed")
        size = ShardDataset(src.build, dataclasses.replace(cfg, task=task)).num_samples
        intended = round(src.passes * size)
        rows.append(ProportionRow(name=src.label, size=size, repeat=src.passes,
                                  intended=intended, served=served[src.label],
                                  skipped=intended - served[src.label]))
    return [dataclasses.replace(r, sa2va=d) for r, d in zip(rows, sa2va_sampler(rows, short),
                                                             strict=True)]


def table(rows: list[ProportionRow]) -> str:
    """A markdown table: size, repeat, intended and served share of the epoch."""
    total_i = sum(r.intended for r in rows)
    total_s = sum(r.served for r in rows)
    total_x = sum(r.sa2va for r in rows)
    lines = ["| source | build size | repeat | intended | intended % | served | served % | "
             "Sa2VA sampler | Sa2VA % |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.size} | {r.repeat:g} | {r.intended} | "
                     f"{100 * r.share(total_i, 'intended'):.2f} | {r.served} | "
                     f"{100 * r.share(total_s):.2f} | {r.sa2va:.1f} | "
                     f"{100 * r.share(total_x, 'sa2va'):.2f} |")
    lines.append(f"| total | | | {total_i} | 100 | {total_s} | 100 | {total_x:.1f} | 100 |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    args = parser.parse_args(argv)
    for name, path in build_miniature(args.out, recipe=args.recipe).items():
        rows = proportions(path, short=SA2VA_SHORT_LENGTHS.get(name, frozenset()))
        print(f"\n## {name}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
