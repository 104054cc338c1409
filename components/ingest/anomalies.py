"""The input checked against the config, as TFX's ExampleValidator would: schema, statistics, anomalies.

Ingestion counts, per split, the kept rows whose line (or its user's common line) carries each
configured feature's input field, and the rows that carry a field no feature reads. From those
counts this module writes, in the protos TFDV uses (tensorflow_metadata):

- ``input_schema.pbtxt``: a Schema with one feature per configured feature, its input field in
  the annotation and ``presence.min_fraction`` = ``input.min_feature_presence``;
- ``input_statistics.pbtxt``: per split, the rows kept and per feature the rows that carried it
  (``num_non_missing``) or not (``num_missing``); fields no feature reads are listed too;
- ``anomalies.pbtxt``: an Anomalies record against that schema: ``FEATURE_TYPE_LOW_FRACTION_PRESENT``
  (error) for a feature present in fewer rows than the schema asks, ``SCHEMA_NEW_COLUMN``
  (warning) for a field the config does not use.

A missing feature fails the step (``executor.check_presence``); an unused field is reported only.
"""
from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from esmm_model.config import Config, Feature
from esmm_model.contracts import layout

SPLITS = (layout.TRAIN, layout.EVAL)


@dataclass(frozen=True)
class Presence:
    """Rows kept per split, and per split the rows carrying each feature and each unused input field."""

    rows: dict[str, int]
    features: dict[str, dict[str, int]]  # split -> feature name -> rows
    unused: dict[str, dict[str, int]]  # split -> input field -> rows

    @classmethod
    def of(cls, counts: dict) -> Presence:
        """From counts.json's ``train``/``eval`` rows, ``presence`` and ``unused_fields``."""
        presence, unused = counts.get("presence", {}), counts.get("unused_fields", {})
        names = sorted({name for s in SPLITS for name in presence.get(s, {})})
        return cls(rows={s: counts.get(s, {}).get("rows", 0) for s in SPLITS},
                   features={s: {name: presence.get(s, {}).get(name, 0) for name in names} for s in SPLITS},
                   unused={s: dict(unused.get(s, {})) for s in SPLITS})

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def fraction(self, name: str) -> float:
        """The share of kept rows (both splits) that carry feature ``name``."""
        present = sum(self.features[s].get(name, 0) for s in SPLITS)
        return present / self.total_rows if self.total_rows else 0.0

    def unused_rows(self) -> dict[str, int]:
        """Input field -> rows (both splits) that carry it, for the fields no feature reads."""
        fields = sorted({f for s in SPLITS for f in self.unused[s]})
        return {f: sum(self.unused[s].get(f, 0) for s in SPLITS) for f in fields}

    def missing(self, config: Config) -> list[Feature]:
        """The features present in fewer than ``input.min_feature_presence`` of the kept rows, in config order."""
        return [f for f in config.features if self.fraction(f.name) < config.input.min_feature_presence]


def _source(feature: Feature) -> str:
    return feature.source or feature.name


def _type(feature: Feature) -> int:
    if feature.kind == "dense":
        return schema_pb2.FLOAT
    return schema_pb2.INT if feature.dtype == "int64" else schema_pb2.BYTES


def input_schema(config: Config) -> schema_pb2.Schema:
    """The config's expectations of the input: each feature's field, type and minimum presence."""
    schema = schema_pb2.Schema()
    for feature in config.features:
        f = schema.feature.add(name=feature.name, type=_type(feature))
        f.presence.min_fraction = config.input.min_feature_presence
        f.annotation.comment.append(f"input field {_source(feature)}")
    return schema


def input_statistics(config: Config, presence: Presence) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Per split: rows kept, and per feature and unused field the rows with and without it."""
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    for split in SPLITS:
        dataset = stats.datasets.add(name=split, num_examples=presence.rows[split])
        carried = [(f.name, _type(f), presence.features[split].get(f.name, 0)) for f in config.features]
        carried += [(field, schema_pb2.BYTES, n) for field, n in sorted(presence.unused[split].items())]
        for name, kind, n in carried:
            feature = dataset.features.add(type=_stats_type(kind))
            feature.path.step.append(name)
            common = (feature.num_stats if kind != schema_pb2.BYTES else feature.string_stats).common_stats
            common.num_non_missing, common.num_missing = n, presence.rows[split] - n
    return stats


def _stats_type(kind: int) -> int:
    types = statistics_pb2.FeatureNameStatistics
    return {schema_pb2.FLOAT: types.FLOAT, schema_pb2.INT: types.INT}.get(kind, types.BYTES)


def _by_split(presence: Presence, count) -> str:
    return ", ".join(f"{s} {count(s) / presence.rows[s]:.2%}" if presence.rows[s] else f"{s} -" for s in SPLITS)


def anomalies(config: Config, presence: Presence) -> anomalies_pb2.Anomalies:
    """Missing features (errors) and unused input fields (warnings) against ``input_schema``."""
    record = anomalies_pb2.Anomalies(baseline=input_schema(config),
                                     anomaly_name_format=anomalies_pb2.Anomalies.SERIALIZED_PATH)
    rows = presence.total_rows
    for feature in presence.missing(config):
        info = record.anomaly_info[feature.name]
        info.severity = anomalies_pb2.AnomalyInfo.ERROR
        info.short_description = "Column dropped"
        by_split = _by_split(presence, lambda s: presence.features[s].get(feature.name, 0))
        info.description = (f"input field {_source(feature)} is present in {presence.fraction(feature.name):.2%} of "
                            f"{rows:,} rows ({by_split}), below input.min_feature_presence "
                            f"{config.input.min_feature_presence:.2%}")
        info.reason.add(type=anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_FRACTION_PRESENT,
                        short_description=info.short_description, description=info.description)
    for field, n in presence.unused_rows().items():
        info = record.anomaly_info[field]
        info.severity = anomalies_pb2.AnomalyInfo.WARNING
        info.short_description = "New column"
        info.description = f"input field {field} is in {n / rows if rows else 0:.2%} of rows and no feature reads it"
        info.reason.add(type=anomalies_pb2.AnomalyInfo.SCHEMA_NEW_COLUMN,
                        short_description=info.short_description, description=info.description)
    return record


def write(config: Config, presence: Presence, out: layout.IngestLayout, write_text) -> None:
    """Writes the input schema, statistics and anomalies under ``out`` with ``write_text(path, text)``."""
    write_text(out.input_schema, text_format.MessageToString(input_schema(config)))
    write_text(out.input_statistics, text_format.MessageToString(input_statistics(config, presence)))
    write_text(out.anomalies, text_format.MessageToString(anomalies(config, presence)))


def describe(presence: Presence) -> str:
    """A short summary: the three least present features, and the input fields no feature reads."""
    names = sorted({name for s in SPLITS for name in presence.features[s]},
                   key=lambda name: (presence.fraction(name), name))
    lines = ["feature presence (rows carrying the field): lowest "
             + (", ".join(f"{name} {presence.fraction(name):.1%}" for name in names[:3]) or "-")]
    unused = presence.unused_rows()
    if unused:
        rows = presence.total_rows
        lines.append("input fields no feature reads: "
                     + ", ".join(f"{field} ({n / rows if rows else 0:.1%} of rows)" for field, n in unused.items()))
    return "\n".join(lines)
