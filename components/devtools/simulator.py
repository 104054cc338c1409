"""A click -> conversion funnel with known ground truth, written in Ali-CCP raw format.

Why a simulator: the public Ali-CCP dump cannot be downloaded here, and only a simulator
can measure what the paper could not, CVR quality over the *entire* impression space.

The world:
- users with a profile (gender, age, geo, consumption level) and latent tastes; a
  shared taste ``u_s`` drives both clicks and purchases, a purchase taste ``u_p`` only
  purchases;
- items in categories and brands with Zipf popularity, a shop, a price, and an
  attractiveness (clickbait) that raises clicks and lowers conversions;
- weighted behaviour lists per user (items, categories, brands, shops, with
  interaction counts as weights), drawn from the user's shared taste;
- impressions exposed by a taste-aware recommender, with position and hour.

``p_click = σ(f_click)`` and ``p_cvr = σ(f_cvr)``. f_cvr shares ``<u_s, v_s>`` with f_click
(so learning from all impressions helps: data sparsity), adds ``<u_p, v_p>`` and a price
fit that clicks do not see (uncorrelated), and subtracts the attractiveness that clicks
reward (anti-correlated), so a model fit on clicked impressions only is biased over the
entire space (sample selection bias). ``click ~ Bern(p_click)`` and, independently,
``would_convert ~ Bern(p_cvr)``; the observed ``conversion = click AND would_convert``.
Intercepts are calibrated by bisection to the target rates on the drawn impressions.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import tensorflow as tf

from components.artifacts import storage
from components.ingest.aliccp_reader import FIELD_SEP, KEY_SEP, VALUE_SEP
from components.progress import progress
from esmm_model.config import Config
from esmm_model.contracts import layout

SKELETON_FILE = "sample_skeleton_sim.csv"
COMMON_FILE = "common_features_sim.csv"
CSV_FILE = "impressions.csv"
GROUND_TRUTH_FILE = "ground_truth.csv"
PRESETS = {"default": (0.04, 0.05), "aliccp": (0.04, 0.005)}

# Ali-CCP field ids the simulator writes (see esmm_model/configs/simulator.yaml).
USER_FIELDS = {"user_id": "101", "gender": "124", "age": "125", "consumption_level": "126", "geo": "129"}
HISTORY_FIELDS = {"categories": "109_14", "shops": "110_14", "brands": "127_14", "items": "205_14"}
ITEM_FIELDS = {"item_id": "205", "category": "206", "shop": "207", "brand": "216", "price_bucket": "220"}
PRICE_FIELD, POSITION_FIELD, HOUR_FIELD = "221", "301", "302"


@dataclass(frozen=True)
class SimulationSpec:
    """Sizes, target rates and seed of one simulated log."""

    rows: int = 200_000
    users: int = 10_000
    items: int = 20_000
    categories: int = 200
    brands: int = 1_000
    shops: int = 2_000
    ctr: float = 0.04
    cvr: float = 0.05
    latent_dim: int = 8
    history_mean: int = 20
    days: int = 2
    seed: int = 7

    @classmethod
    def preset(cls, name: str, **overrides) -> "SimulationSpec":
        ctr, cvr = PRESETS[name]
        return replace(cls(ctr=ctr, cvr=cvr), **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SimulationSummary:
    """What a simulation wrote, and its realised rates."""

    out_dir: str
    rows: int
    clicks: int
    conversions: int
    would_convert: int
    mean_p_click: float
    mean_p_cvr_clicked: float
    mean_p_cvr_all: float

    def describe(self) -> str:
        return (f"simulated {self.rows:,} impressions into {self.out_dir}: "
                f"CTR {self.clicks / self.rows:.4f} (target mean p_click {self.mean_p_click:.4f}), "
                f"CVR|click {self.conversions / max(self.clicks, 1):.4f} "
                f"(mean p_cvr on clicked {self.mean_p_cvr_clicked:.4f}), "
                f"CVR over all impressions {self.would_convert / self.rows:.4f}")


@dataclass
class World:
    """Users, items and their latent structure; impressions are drawn from it."""

    user_shared: np.ndarray
    user_purchase: np.ndarray
    user_profile: dict[str, np.ndarray]
    user_price_pref: np.ndarray
    user_activity: np.ndarray
    item_shared: np.ndarray
    item_purchase: np.ndarray
    item_attractiveness: np.ndarray
    item_popularity: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_shop: np.ndarray
    item_price: np.ndarray
    item_price_bucket: np.ndarray
    shop_quality: np.ndarray
    histories: list[dict[str, tuple[np.ndarray, np.ndarray]]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def build_world(spec: SimulationSpec, rng: np.random.Generator) -> World:
    """Draws users, items and behaviour lists."""
    d = spec.latent_dim
    cat_s, cat_p = rng.normal(size=(spec.categories, d)), rng.normal(size=(spec.categories, d))
    brand_s, brand_p = rng.normal(size=(spec.brands, d)), rng.normal(size=(spec.brands, d))
    item_category = rng.choice(spec.categories, size=spec.items, p=_zipf_weights(spec.categories, 0.8, rng))
    brand_category = rng.choice(spec.categories, size=spec.brands)
    brands_by_category = [np.flatnonzero(brand_category == c) for c in range(spec.categories)]
    item_brand = np.array([rng.choice(brands_by_category[c]) if len(brands_by_category[c])
                           else rng.integers(spec.brands) for c in item_category])
    item_shop = rng.integers(spec.shops, size=spec.items)
    item_shared = cat_s[item_category] + 0.5 * brand_s[item_brand] + 0.5 * rng.normal(size=(spec.items, d))
    item_purchase = cat_p[item_category] + 0.5 * brand_p[item_brand] + 0.5 * rng.normal(size=(spec.items, d))
    category_price = rng.normal(3.5, 0.8, size=spec.categories)
    item_price = np.exp(category_price[item_category] + 0.4 * rng.normal(size=spec.items))
    price_edges = np.quantile(item_price, np.linspace(0, 1, 11)[1:-1])
    item_price_bucket = np.searchsorted(price_edges, item_price)

    gender = rng.integers(2, size=spec.users)
    age = rng.choice(7, size=spec.users, p=[0.05, 0.2, 0.3, 0.2, 0.12, 0.08, 0.05])
    geo = rng.integers(30, size=spec.users)
    consumption = rng.choice(3, size=spec.users, p=[0.3, 0.5, 0.2])
    group_s = rng.normal(size=(2, 7, d))
    group_p = rng.normal(size=(2, 7, d))
    user_shared = 0.7 * group_s[gender, age] + 0.7 * rng.normal(size=(spec.users, d))
    user_purchase = 0.7 * group_p[gender, age] + 0.7 * rng.normal(size=(spec.users, d))
    user_price_pref = 2.5 + 3.0 * consumption + rng.normal(0, 1.0, size=spec.users)

    popularity = _zipf_weights(spec.items, 1.05, rng)
    histories = _draw_histories(spec, rng, user_shared, item_shared, popularity, item_category, item_brand, item_shop)
    return World(
        user_shared=user_shared, user_purchase=user_purchase,
        user_profile={"gender": gender, "age": age, "geo": geo, "consumption_level": consumption},
        user_price_pref=user_price_pref, user_activity=rng.lognormal(0.0, 1.0, size=spec.users),
        item_shared=item_shared, item_purchase=item_purchase,
        item_attractiveness=rng.normal(size=spec.items), item_popularity=popularity,
        item_category=item_category, item_brand=item_brand, item_shop=item_shop,
        item_price=item_price, item_price_bucket=item_price_bucket,
        shop_quality=rng.normal(size=spec.shops), histories=histories)


def _draw_histories(spec, rng, user_shared, item_shared, popularity, item_category, item_brand, item_shop):
    """Each user's past interactions: items drawn by taste among popular candidates, counts as weights."""
    pool = 200
    scale = 1.0 / np.sqrt(spec.latent_dim)
    histories = []
    for user in range(spec.users):
        candidates = rng.choice(spec.items, size=pool, p=popularity)
        scores = item_shared[candidates] @ user_shared[user] * scale + rng.gumbel(size=pool)
        length = max(1, min(pool, rng.poisson(spec.history_mean)))
        items = candidates[np.argsort(-scores)[:length]]
        items, first = np.unique(items, return_index=True)
        counts = (1 + rng.poisson(1.0, size=len(items))).astype(np.float64)
        history = {"items": (items, counts)}
        for name, attribute in (("categories", item_category), ("brands", item_brand), ("shops", item_shop)):
            ids, inverse = np.unique(attribute[items], return_inverse=True)
            history[name] = (ids, np.bincount(inverse, weights=counts))
        histories.append(history)
    return histories


def _calibrate(logits: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """The intercept b with weighted mean σ(logits + b) == target, by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        mean = np.average(_sigmoid(logits + mid), weights=weights)
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Impressions:
    """Drawn impressions, in time order, with their true probabilities and outcomes."""

    user: np.ndarray
    item: np.ndarray
    position: np.ndarray
    hour: np.ndarray
    p_click: np.ndarray
    p_cvr: np.ndarray
    click: np.ndarray
    would_convert: np.ndarray

    @property
    def conversion(self) -> np.ndarray:
        return self.click & self.would_convert


def draw_impressions(spec: SimulationSpec, world: World, rng: np.random.Generator) -> Impressions:
    """Exposes items to users, then draws clicks and purchases from the true probabilities."""
    n, k = spec.rows, 16
    scale = 1.0 / np.sqrt(spec.latent_dim)
    user = rng.choice(spec.users, size=n, p=world.user_activity / world.user_activity.sum())
    # A taste-aware recommender: the best of k popular candidates by shared taste, with noise.
    item = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        candidates = rng.choice(spec.items, size=(stop - start, k), p=world.item_popularity)
        affinity = np.einsum("nkd,nd->nk", world.item_shared[candidates], world.user_shared[user[start:stop]]) * scale
        pick = np.argmax(affinity + 1.5 * rng.gumbel(size=affinity.shape), axis=1)
        item[start:stop] = candidates[np.arange(stop - start), pick]
    position = np.minimum(rng.geometric(0.15, size=n), 30)
    hour = np.floor(np.sort(rng.uniform(0.0, 24.0 * spec.days, size=n))).astype(np.int64) % 24

    shared = np.einsum("nd,nd->n", world.user_shared[user], world.item_shared[item]) * scale
    purchase = np.einsum("nd,nd->n", world.user_purchase[user], world.item_purchase[item]) * scale
    attractiveness = world.item_attractiveness[item]
    history_codes = np.concatenate([u * spec.categories + h["categories"][0] for u, h in enumerate(world.histories)])
    in_history = np.isin(user * spec.categories + world.item_category[item], history_codes)
    price_misfit = np.abs(np.log(world.item_price[item]) - world.user_price_pref[user] / 2.0 - 1.0)
    f_click = (1.0 * shared + 0.8 * attractiveness + 0.4 * in_history - 0.35 * np.log(position)
               + 0.2 * np.sin(2 * np.pi * hour / 24) + 0.3 * np.log(world.item_popularity[item] * spec.items))
    f_cvr = (0.7 * shared + 1.0 * purchase - 0.8 * attractiveness - 0.6 * price_misfit
             + 0.4 * world.shop_quality[world.item_shop[item]])
    p_click = _sigmoid(f_click + _calibrate(f_click, spec.ctr))
    p_cvr = _sigmoid(f_cvr + _calibrate(f_cvr, spec.cvr, weights=p_click))
    click = rng.random(n) < p_click
    would_convert = rng.random(n) < p_cvr
    return Impressions(user=user, item=item, position=position, hour=hour,
                       p_click=p_click, p_cvr=p_cvr, click=click, would_convert=would_convert)


def _common_feature_index(user: int) -> str:
    return f"{(user * 2654435761 + 0x9E3779B9) % (1 << 64):016x}"


def user_fields(world: World, user: int) -> dict[str, list[tuple[str, float]]]:
    """The user's Ali-CCP fields: field id -> [(feature id, value)]."""
    fields = {USER_FIELDS["user_id"]: [(str(user), 1.0)]}
    for name, values in world.user_profile.items():
        fields[USER_FIELDS[name]] = [(str(values[user]), 1.0)]
    for name, (ids, counts) in world.histories[user].items():
        fields[HISTORY_FIELDS[name]] = [(str(i), float(c)) for i, c in zip(ids, counts)]
    return fields


def impression_fields(world: World, imp: Impressions, row: int) -> dict[str, list[tuple[str, float]]]:
    """The impression's item and context Ali-CCP fields."""
    item = imp.item[row]
    return {
        ITEM_FIELDS["item_id"]: [(str(item), 1.0)],
        ITEM_FIELDS["category"]: [(str(world.item_category[item]), 1.0)],
        ITEM_FIELDS["shop"]: [(str(world.item_shop[item]), 1.0)],
        ITEM_FIELDS["brand"]: [(str(world.item_brand[item]), 1.0)],
        ITEM_FIELDS["price_bucket"]: [(str(world.item_price_bucket[item]), 1.0)],
        PRICE_FIELD: [(PRICE_FIELD, round(float(world.item_price[item]), 2))],
        POSITION_FIELD: [(str(imp.position[row]), 1.0)],
        HOUR_FIELD: [(HOUR_FIELD, float(imp.hour[row]))],
    }


def _feature_list(fields: dict[str, list[tuple[str, float]]]) -> tuple[int, str]:
    entries = [f"{field}{KEY_SEP}{fid}{VALUE_SEP}{value:g}" for field, pairs in fields.items() for fid, value in pairs]
    return len(entries), FIELD_SEP.join(entries)


def simulate(spec: SimulationSpec, config: Config, out_dir: str, *, write_csv: bool = False) -> SimulationSummary:
    """Writes the Ali-CCP raw log, the ground-truth sidecar and, optionally, a CSV log (local or a URI)."""
    out = str(out_dir)
    tf.io.gfile.makedirs(out)
    rng = np.random.default_rng(spec.seed)
    world = build_world(spec, rng)
    imp = draw_impressions(spec, world, rng)
    conversion = imp.conversion
    users_seen = np.unique(imp.user)

    with tf.io.gfile.GFile(layout.join(out, COMMON_FILE), "w") as f:
        for user in progress(users_seen, "simulate: users", "user"):
            num, features = _feature_list(user_fields(world, int(user)))
            f.write(f"{_common_feature_index(int(user))},{num},{features}\n")

    csv_writer = csv_file = None
    if write_csv:
        csv_file = tf.io.gfile.GFile(layout.join(out, CSV_FILE), "w")
        csv_writer = _CsvLogWriter(csv_file, config)
    with (tf.io.gfile.GFile(layout.join(out, SKELETON_FILE), "w") as skeleton,
          tf.io.gfile.GFile(layout.join(out, GROUND_TRUTH_FILE), "w") as truth):
        truth.write("sample_id,p_click,p_cvr,would_convert\n")
        for row in progress(range(spec.rows), "simulate: impressions", "row"):
            sample_id = row + 1
            fields = impression_fields(world, imp, row)
            num, features = _feature_list(fields)
            user = int(imp.user[row])
            skeleton.write(f"{sample_id},{int(imp.click[row])},{int(conversion[row])},"
                           f"{_common_feature_index(user)},{num},{features}\n")
            truth.write(f"{sample_id},{imp.p_click[row]:.6g},{imp.p_cvr[row]:.6g},{int(imp.would_convert[row])}\n")
            if csv_writer:
                csv_writer.write(sample_id, int(imp.click[row]), int(conversion[row]),
                                 {**user_fields(world, user), **fields})
    if csv_file:
        csv_file.close()
    summary = SimulationSummary(
        out_dir=out, rows=spec.rows, clicks=int(imp.click.sum()), conversions=int(conversion.sum()),
        would_convert=int(imp.would_convert.sum()), mean_p_click=float(imp.p_click.mean()),
        mean_p_cvr_clicked=float(np.average(imp.p_cvr, weights=imp.click) if imp.click.any() else 0.0),
        mean_p_cvr_all=float(imp.p_cvr.mean()))
    storage.write_text(layout.join(out, "simulation.json"),
                       json.dumps({"spec": asdict(spec), "summary": asdict(summary)}, indent=2))
    return summary


class _CsvLogWriter:
    """Writes impressions as CSV with columns named by the feature config."""

    def __init__(self, file, config: Config):
        self._features = config.features
        self._writer = csv.writer(file)
        self._writer.writerow(["sample_id", "click", "conversion", *(f.name for f in self._features)])

    def write(self, sample_id: int, click: int, conversion: int, fields: dict[str, list[tuple[str, float]]]) -> None:
        cells = []
        for feature in self._features:
            pairs = fields.get(feature.source or feature.name, [])
            if feature.kind == "weighted_ids":
                cells.append("|".join(f"{i}:{w:g}" for i, w in pairs))
            elif feature.kind == "dense":
                cells.append(f"{pairs[0][1]:g}" if pairs else "")
            else:
                cells.append(pairs[0][0] if pairs else "")
        self._writer.writerow([sample_id, click, conversion, *cells])
