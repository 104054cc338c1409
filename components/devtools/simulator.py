"""Click -> conversion funnels with known ground truth, written in Ali-CCP raw format.

Why a simulator: the public Ali-CCP dump cannot be downloaded here, and only a simulator
can measure what the paper could not, CVR quality over the *entire* impression space.

Several stories (``STORIES``, docs/simulator.md) share one world and one writer and differ in
structure, so that a choice made on one (dev) can be checked on the others (test):
- ``baseline``: the world below;
- ``clickbait``: per-item click appeal and conversion quality anti-correlated, a recommender that
  favours appeal, brand and shop quality that move conversions only, thrifty users who click
  much and buy little;
- ``long_tail``: a flat Zipf popularity (a fat tail) over a large catalogue, many light users, items
  and users that arrive during the log (cold ids in the later, eval half), short behaviour lists;
- ``position``: clicks need the slot to be examined (``p_click = examination(position, hour) ×
  attraction``), conversions do not depend on the slot.

The baseline world:
- users with a profile (gender, age, geo, consumption level) and latent tastes; a
  shared taste ``u_s`` drives both clicks and purchases, a purchase taste ``u_p`` only
  purchases;
- items in categories and brands with Zipf popularity, a shop, a price, and an
  attractiveness (clickbait) that raises clicks and lowers conversions;
- weighted behaviour lists per user (items, categories, brands, shops, intentions, with
  interaction counts as weights), drawn from the user's shared taste;
- impressions exposed by a taste-aware recommender, with position and hour.

``p_click = σ(f_click)`` and ``p_cvr = σ(f_cvr)``. f_cvr shares ``<u_s, v_s>`` with f_click
(so learning from all impressions helps: data sparsity), adds ``<u_p, v_p>`` and a price
fit that clicks do not see (uncorrelated), and subtracts the attractiveness that clicks
reward (anti-correlated), so a model fit on clicked impressions only is biased over the
entire space (sample selection bias). ``click ~ Bern(p_click)`` and, independently,
``would_convert ~ Bern(p_cvr)``; the observed ``conversion = click AND would_convert``.
Intercepts are calibrated by bisection to the target rates on the drawn impressions.

Every story writes the real Ali-CCP fields (``ALICCP_USER_FIELDS``, the repeated intention
nodes 210 and the weighted crosses 508/509/702/853) besides the simulator's own (205_14, 220,
221, 302). Feature ids are per field, not global. The Ali-CCP-only fields and each story's own
structure come from generators of their own, so the baseline's draws are those it always had.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from components.artifacts import storage
from components.ingest.aliccp_reader import FIELD_SEP, KEY_SEP, VALUE_SEP
from components.progress import progress
from esmm_model.config import Config
from esmm_model.contracts import layout
from esmm_model.errors import EsmmError

SKELETON_FILE = "sample_skeleton_sim.csv"
COMMON_FILE = "common_features_sim.csv"
CSV_FILE = "impressions.csv"
GROUND_TRUTH_FILE = "ground_truth.csv"

# Ali-CCP field ids the simulator writes (see esmm_model/configs/simulator.yaml and aliccp.yaml).
USER_FIELDS = {"user_id": "101", "gender": "124", "age": "125", "consumption_level": "126", "geo": "129"}
ALICCP_USER_FIELDS = {"user_categorical": "121", "user_group": "122", "consumption_level_2": "127",
                      "occupation": "128"}
HISTORY_FIELDS = {"categories": "109_14", "shops": "110_14", "brands": "127_14", "items": "205_14",
                  "intentions": "150_14"}
ITEM_FIELDS = {"item_id": "205", "category": "206", "shop": "207", "brand": "216", "price_bucket": "220"}
INTENTION_FIELD = "210"
# cross field -> (the user's behaviour list, the candidate's attribute) it crosses
CROSS_FIELDS = {"508": ("categories", "category"), "509": ("shops", "shop"), "702": ("brands", "brand"),
                "853": ("intentions", "intentions")}
PRICE_FIELD, POSITION_FIELD, HOUR_FIELD = "221", "301", "302"


@dataclass(frozen=True)
class Story:
    """The structural knobs of one story; the defaults are the baseline's."""

    popularity_exponent: float = 1.05  # Zipf exponent of item popularity
    activity_sigma: float = 1.0  # log-normal spread of how often a user is seen
    candidates: int = 16  # the recommender shows the best of this many popular items
    appeal_exposure: float = 0.0  # how much the recommender favours click appeal over taste
    quality_correlation: Optional[float] = None  # corr(appeal, quality); None: quality = -appeal
    thrifty_share: float = 0.0  # users who click much and buy little (more of them at low consumption)
    newcomer_share: float = 0.0  # items and users that first appear during the log (cold start)


STORIES = {
    "baseline": Story(),
    "clickbait": Story(popularity_exponent=0.8, appeal_exposure=0.8, quality_correlation=-0.85, thrifty_share=0.25),
    "long_tail": Story(popularity_exponent=0.9, activity_sigma=1.6, candidates=4, newcomer_share=0.5),
    "position": Story(),
}
_BASELINE_SIZES = {
    "small": dict(rows=20_000, users=2_000, items=4_000, categories=50, brands=200, shops=300, intentions=100),
    "1m": dict(rows=1_000_000, users=10_000, items=20_000, categories=200, brands=1_000, shops=2_000,
               intentions=300),
}
# Each story's sizes: "small" for tests (seconds), "1m" for benchmarks.
PRESET_SIZES = {
    "baseline": _BASELINE_SIZES,
    "clickbait": {
        "small": dict(rows=20_000, users=1_000, items=600, categories=30, brands=60, shops=100, intentions=60),
        "1m": dict(rows=1_000_000, users=5_000, items=8_000, categories=120, brands=500, shops=900,
                   intentions=300),
    },
    "long_tail": {
        "small": dict(rows=20_000, users=8_000, items=15_000, categories=100, brands=1_500, shops=3_000,
                      intentions=200, history_mean=4),
        "1m": dict(rows=1_000_000, users=200_000, items=300_000, categories=400, brands=20_000, shops=50_000,
                   intentions=1_000, history_mean=4),
    },
    "position": _BASELINE_SIZES,
}


@dataclass(frozen=True)
class SimulationSpec:
    """Story, sizes, target rates and seed of one simulated log."""

    rows: int = 200_000
    users: int = 10_000
    items: int = 20_000
    categories: int = 200
    brands: int = 1_000
    shops: int = 2_000
    intentions: int = 300
    ctr: float = 0.04
    cvr: float = 0.05
    latent_dim: int = 8
    history_mean: int = 20
    days: int = 2
    seed: int = 7
    preset: str = "baseline"

    def __post_init__(self):
        if self.preset not in STORIES:
            raise EsmmError(f"unknown simulator preset {self.preset!r}; known: {', '.join(STORIES)}")

    @classmethod
    def for_preset(cls, name: str, size: str = "1m", **overrides) -> "SimulationSpec":
        """The story ``name`` at its ``size`` ("small" or "1m"); overrides that are not None win."""
        if name not in PRESET_SIZES:
            raise EsmmError(f"unknown simulator preset {name!r}; known: {', '.join(STORIES)}")
        if size not in PRESET_SIZES[name]:
            raise EsmmError(f"unknown simulator size {size!r}; known: {', '.join(PRESET_SIZES[name])}")
        return replace(cls(preset=name, **PRESET_SIZES[name][size]),
                       **{k: v for k, v in overrides.items() if v is not None})

    @property
    def story(self) -> Story:
        return STORIES[self.preset]


@dataclass(frozen=True)
class SimulationSummary:
    """What a simulation wrote, and its realised rates."""

    out_dir: str
    preset: str
    rows: int
    clicks: int
    conversions: int
    would_convert: int
    mean_p_click: float
    mean_p_cvr_clicked: float
    mean_p_cvr_all: float

    def describe(self) -> str:
        return (f"simulated {self.rows:,} impressions ({self.preset}) into {self.out_dir}: "
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
    item_attractiveness: np.ndarray  # click appeal
    item_popularity: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_shop: np.ndarray
    item_price: np.ndarray
    item_price_bucket: np.ndarray
    shop_quality: np.ndarray
    histories: list[dict[str, tuple[np.ndarray, np.ndarray]]]
    item_arrival: np.ndarray  # when an item first can be shown, as a share of the log (0: from the start)
    user_arrival: np.ndarray
    # each story's own structure, drawn after the rest (some unused by the baseline's probabilities)
    item_quality: Optional[np.ndarray] = None  # conversion quality
    brand_quality: Optional[np.ndarray] = None
    user_thrifty: Optional[np.ndarray] = None
    item_intentions: Optional[list[np.ndarray]] = None  # Ali-CCP's field 210


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def _cdf(weights: np.ndarray) -> np.ndarray:
    """The normalised cumulative weights: searchsorted on uniforms draws as ``Generator.choice(p=...)`` does."""
    cdf = weights.cumsum()
    cdf /= cdf[-1]
    return cdf


def build_world(spec: SimulationSpec, rng: np.random.Generator) -> World:
    """Draws users, items and behaviour lists."""
    story = spec.story
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

    popularity = _zipf_weights(spec.items, story.popularity_exponent, rng)
    story_rng = np.random.default_rng([spec.seed, 1])
    item_arrival, user_arrival = _arrival(story, story_rng, spec.items), _arrival(story, story_rng, spec.users)
    # Behaviour lists predate the log: they hold only the items there from its start.
    histories = _draw_histories(spec, rng, user_shared, item_shared, popularity * (item_arrival == 0),
                                item_category, item_brand, item_shop)
    world = World(
        user_shared=user_shared, user_purchase=user_purchase,
        user_profile={"gender": gender, "age": age, "geo": geo, "consumption_level": consumption},
        user_price_pref=user_price_pref, user_activity=rng.lognormal(0.0, story.activity_sigma, size=spec.users),
        item_shared=item_shared, item_purchase=item_purchase,
        item_attractiveness=rng.normal(size=spec.items), item_popularity=popularity,
        item_category=item_category, item_brand=item_brand, item_shop=item_shop,
        item_price=item_price, item_price_bucket=item_price_bucket,
        shop_quality=rng.normal(size=spec.shops), histories=histories,
        item_arrival=item_arrival, user_arrival=user_arrival)
    _add_story_structure(spec, world, story_rng)
    _add_aliccp_fields(spec, world, np.random.default_rng([spec.seed, 2]))
    return world


def _arrival(story: Story, rng: np.random.Generator, n: int) -> np.ndarray:
    """When each of n ids first can be seen, as a share of the log: 0 except for the story's newcomers."""
    late = rng.random(n) < story.newcomer_share
    return np.where(late, rng.random(n), 0.0)


def _draw_histories(spec, rng, user_shared, item_shared, weights, item_category, item_brand, item_shop):
    """Each user's past interactions: items drawn by taste among popular candidates, counts as weights."""
    pool = 200
    scale = 1.0 / np.sqrt(spec.latent_dim)
    cdf = _cdf(weights)
    histories = []
    for user in range(spec.users):
        candidates = cdf.searchsorted(rng.random(pool), side="right")
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


def _add_story_structure(spec: SimulationSpec, world: World, rng: np.random.Generator) -> None:
    """Conversion quality, brand quality and thrifty users, as the story sets them."""
    story = spec.story
    appeal = world.item_attractiveness
    if story.quality_correlation is None:
        world.item_quality = -appeal
    else:
        rho = story.quality_correlation
        world.item_quality = rho * appeal + np.sqrt(1.0 - rho ** 2) * rng.normal(size=spec.items)
    world.brand_quality = rng.normal(size=spec.brands)
    thrifty_odds = np.array([1.8, 0.8, 0.4])[world.user_profile["consumption_level"]]
    world.user_thrifty = rng.random(spec.users) < story.thrifty_share * thrifty_odds


def _add_aliccp_fields(spec: SimulationSpec, world: World, rng: np.random.Generator) -> None:
    """User categorical/group ids, a second consumption level, occupation, intention nodes per item
    (1-4, mostly of the item's category) and each user's intention history."""
    profile = world.user_profile
    world.user_profile.update({
        "user_categorical": profile["geo"] * 3 + profile["consumption_level"],
        "user_group": profile["gender"] * 7 + profile["age"],
        "consumption_level_2": np.minimum(3, profile["consumption_level"] + rng.binomial(1, 0.3, size=spec.users)),
        "occupation": rng.integers(2, size=spec.users),
    })
    intention_category = rng.permutation(np.arange(spec.intentions) % spec.categories)
    by_category = [np.flatnonzero(intention_category == c) for c in range(spec.categories)]
    counts = 1 + np.minimum(rng.poisson(0.7, size=spec.items), 3)
    stray = rng.random(spec.items) < 0.1
    world.item_intentions = [
        np.unique(rng.choice(by_category[c] if len(by_category[c]) and not s else spec.intentions, size=k))
        for c, k, s in zip(world.item_category, counts, stray)]
    for history in world.histories:
        items, weights = history["items"]
        nodes = [world.item_intentions[i] for i in items]
        ids, inverse = np.unique(np.concatenate(nodes), return_inverse=True)
        history["intentions"] = (ids, np.bincount(inverse, weights=np.repeat(weights, [len(n) for n in nodes])))


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


@dataclass
class Terms:
    """Per impression: the parts of the world a story's click and conversion logits are made of."""

    shared: np.ndarray  # <u_s, v_s>: drives clicks and purchases
    purchase: np.ndarray  # <u_p, v_p>: purchases only
    appeal: np.ndarray  # the item's click appeal
    quality: np.ndarray  # the item's conversion quality
    brand_quality: np.ndarray
    shop_quality: np.ndarray
    thrifty: np.ndarray  # 1.0 for a thrifty user
    in_history: np.ndarray  # the item's category is in the user's behaviour list
    price_misfit: np.ndarray
    log_position: np.ndarray
    hour: np.ndarray
    log_popularity: np.ndarray


# A story's logits: (f_click, examination or None, f_cvr). With an examination e,
# p_click = e × σ(f_click + b), else σ(f_click + b).
Logits = Callable[[Terms], tuple[np.ndarray, Optional[np.ndarray], np.ndarray]]


def _baseline_logits(t: Terms):
    f_click = (1.0 * t.shared + 0.8 * t.appeal + 0.4 * t.in_history - 0.35 * t.log_position
               + 0.2 * np.sin(2 * np.pi * t.hour / 24) + 0.3 * t.log_popularity)
    f_cvr = 0.7 * t.shared + 1.0 * t.purchase + 0.8 * t.quality - 0.6 * t.price_misfit + 0.4 * t.shop_quality
    return f_click, None, f_cvr


def _clickbait_logits(t: Terms):
    # Appeal, not popularity, makes an item clicked; its quality, brand and shop make it bought.
    f_click = (1.0 * t.shared + 2.0 * t.appeal + 0.4 * t.in_history - 0.35 * t.log_position
               + 0.2 * np.sin(2 * np.pi * t.hour / 24) + 0.8 * t.thrifty)
    f_cvr = (0.5 * t.shared + 1.0 * t.purchase + 2.0 * t.quality + 0.8 * t.brand_quality + 0.6 * t.shop_quality
             - 0.6 * t.price_misfit - 1.5 * t.thrifty)
    return f_click, None, f_cvr


def _position_logits(t: Terms):
    # A slot is examined with probability 1/position, less at night; only examined slots are clicked.
    examination = np.exp(-t.log_position) * (0.7 + 0.3 * np.cos(2 * np.pi * (t.hour - 15) / 24))
    f_click = 1.0 * t.shared + 0.8 * t.appeal + 0.4 * t.in_history + 0.3 * t.log_popularity
    _, _, f_cvr = _baseline_logits(t)
    return f_click, examination, f_cvr


LOGITS: dict[str, Logits] = {"baseline": _baseline_logits, "clickbait": _clickbait_logits,
                             "long_tail": _baseline_logits, "position": _position_logits}


def _draw_arrived(rng: np.random.Generator, weights: np.ndarray, arrival: np.ndarray, times: np.ndarray,
                  k: int) -> np.ndarray:
    """[len(times), k] ids drawn by weight among the ids that have arrived by each time."""
    order = np.argsort(arrival, kind="stable")
    cdf = weights[order].cumsum()
    arrived = np.searchsorted(arrival[order], times, side="right")  # >= 1: some ids arrive at 0
    draws = rng.random((len(times), k)) * cdf[arrived - 1][:, None]
    return order[np.minimum(cdf.searchsorted(draws, side="right"), arrived[:, None] - 1)]


def draw_impressions(spec: SimulationSpec, world: World, rng: np.random.Generator) -> Impressions:
    """Exposes items to users, then draws clicks and purchases from the true probabilities."""
    story = spec.story
    n, k = spec.rows, story.candidates
    scale = 1.0 / np.sqrt(spec.latent_dim)
    times = np.arange(n) / n
    if story.newcomer_share:
        user = _draw_arrived(rng, world.user_activity, world.user_arrival, times, 1)[:, 0]
    else:
        user = rng.choice(spec.users, size=n, p=world.user_activity / world.user_activity.sum())
    # A taste-aware recommender: the best of k popular candidates by shared taste (and appeal), with noise.
    item = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        if story.newcomer_share:
            candidates = _draw_arrived(rng, world.item_popularity, world.item_arrival, times[start:stop], k)
        else:
            candidates = rng.choice(spec.items, size=(stop - start, k), p=world.item_popularity)
        affinity = np.einsum("nkd,nd->nk", world.item_shared[candidates], world.user_shared[user[start:stop]]) * scale
        affinity += story.appeal_exposure * world.item_attractiveness[candidates]
        pick = np.argmax(affinity + 1.5 * rng.gumbel(size=affinity.shape), axis=1)
        item[start:stop] = candidates[np.arange(stop - start), pick]
    position = np.minimum(rng.geometric(0.15, size=n), 30)
    hour = np.floor(np.sort(rng.uniform(0.0, 24.0 * spec.days, size=n))).astype(np.int64) % 24

    history_codes = np.concatenate([u * spec.categories + h["categories"][0] for u, h in enumerate(world.histories)])
    terms = Terms(
        shared=np.einsum("nd,nd->n", world.user_shared[user], world.item_shared[item]) * scale,
        purchase=np.einsum("nd,nd->n", world.user_purchase[user], world.item_purchase[item]) * scale,
        appeal=world.item_attractiveness[item], quality=world.item_quality[item],
        brand_quality=world.brand_quality[world.item_brand[item]],
        shop_quality=world.shop_quality[world.item_shop[item]],
        thrifty=world.user_thrifty[user].astype(np.float64),
        in_history=np.isin(user * spec.categories + world.item_category[item], history_codes),
        price_misfit=np.abs(np.log(world.item_price[item]) - world.user_price_pref[user] / 2.0 - 1.0),
        log_position=np.log(position), hour=hour, log_popularity=np.log(world.item_popularity[item] * spec.items))
    f_click, examination, f_cvr = LOGITS[spec.preset](terms)
    if examination is None:
        p_click = _sigmoid(f_click + _calibrate(f_click, spec.ctr))
    else:
        p_click = examination * _sigmoid(f_click + _calibrate(f_click, spec.ctr / examination.mean(),
                                                              weights=examination))
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
        fields[USER_FIELDS.get(name) or ALICCP_USER_FIELDS[name]] = [(str(values[user]), 1.0)]
    for name, (ids, counts) in world.histories[user].items():
        fields[HISTORY_FIELDS[name]] = [(str(i), float(c)) for i, c in zip(ids, counts)]
    return fields


class _Crosses:
    """The weighted cross fields of an impression: each of the candidate's attribute values found in
    the user's matching behaviour list, weighted by the user's count for it."""

    def __init__(self, world: World):
        self._world = world
        self._counts: dict[int, dict[str, dict[int, float]]] = {}

    def fields(self, user: int, item: int) -> dict[str, list[tuple[str, float]]]:
        world = self._world
        if user not in self._counts:
            self._counts[user] = {name: dict(zip(ids.tolist(), counts.tolist()))
                                  for name, (ids, counts) in world.histories[user].items()}
        counts = self._counts[user]
        candidate = {"category": [world.item_category[item]], "shop": [world.item_shop[item]],
                     "brand": [world.item_brand[item]], "intentions": world.item_intentions[item].tolist()}
        fields = {}
        for field, (history, attribute) in CROSS_FIELDS.items():
            pairs = [(str(v), counts[history][v]) for v in candidate[attribute] if v in counts[history]]
            if pairs:
                fields[field] = pairs
        return fields


def impression_fields(world: World, imp: Impressions, row: int) -> dict[str, list[tuple[str, float]]]:
    """The impression's item and context Ali-CCP fields (crosses apart: ``_Crosses``)."""
    item = imp.item[row]
    return {
        ITEM_FIELDS["item_id"]: [(str(item), 1.0)],
        ITEM_FIELDS["category"]: [(str(world.item_category[item]), 1.0)],
        ITEM_FIELDS["shop"]: [(str(world.item_shop[item]), 1.0)],
        ITEM_FIELDS["brand"]: [(str(world.item_brand[item]), 1.0)],
        ITEM_FIELDS["price_bucket"]: [(str(world.item_price_bucket[item]), 1.0)],
        INTENTION_FIELD: [(str(i), 1.0) for i in world.item_intentions[item]],
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

    crosses = _Crosses(world)
    csv_writer = csv_file = None
    if write_csv:
        csv_file = tf.io.gfile.GFile(layout.join(out, CSV_FILE), "w")
        csv_writer = _CsvLogWriter(csv_file, config)
    with (tf.io.gfile.GFile(layout.join(out, SKELETON_FILE), "w") as skeleton,
          tf.io.gfile.GFile(layout.join(out, GROUND_TRUTH_FILE), "w") as truth):
        truth.write("sample_id,p_click,p_cvr,would_convert\n")
        for row in progress(range(spec.rows), "simulate: impressions", "row"):
            sample_id = row + 1
            user = int(imp.user[row])
            fields = {**impression_fields(world, imp, row), **crosses.fields(user, int(imp.item[row]))}
            num, features = _feature_list(fields)
            skeleton.write(f"{sample_id},{int(imp.click[row])},{int(conversion[row])},"
                           f"{_common_feature_index(user)},{num},{features}\n")
            truth.write(f"{sample_id},{imp.p_click[row]:.6g},{imp.p_cvr[row]:.6g},{int(imp.would_convert[row])}\n")
            if csv_writer:
                csv_writer.write(sample_id, int(imp.click[row]), int(conversion[row]),
                                 {**user_fields(world, user), **fields})
    if csv_file:
        csv_file.close()
    summary = SimulationSummary(
        out_dir=out, preset=spec.preset, rows=spec.rows, clicks=int(imp.click.sum()),
        conversions=int(conversion.sum()), would_convert=int(imp.would_convert.sum()),
        mean_p_click=float(imp.p_click.mean()),
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
