# The component image: every pipeline step (esmm compile --image ...) runs in it.
# Build stage: compilers for any dependency that ships no wheel, and a virtual environment
# with the exact versions of constraints.txt. Final stage: that environment alone, non-root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/esmm
WORKDIR /src
# Dependencies first, from pyproject.toml pinned by constraints.txt: this layer survives source edits.
# EXTRAS: optional dependency groups to include; gcp gives Beam's gs:// filesystem (tf.io.gfile has its own).
ARG EXTRAS=gcp
COPY pyproject.toml constraints.txt ./
RUN EXTRAS="${EXTRAS}" python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split(',') if e for d in p['optional-dependencies'][e]]))" \
        > requirements.txt \
    && /opt/esmm/bin/pip install --upgrade pip wheel \
    && /opt/esmm/bin/pip install --constraint constraints.txt --requirement requirements.txt
COPY README.md ./
COPY esmm_model ./esmm_model
COPY components ./components
COPY pipelines ./pipelines
COPY serving_client ./serving_client
RUN /opt/esmm/bin/pip install --constraint constraints.txt --no-deps . \
    && /opt/esmm/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 1000 esmm \
    && useradd --uid 1000 --gid esmm --create-home --home-dir /home/esmm --shell /usr/sbin/nologin esmm
COPY --from=build /opt/esmm /opt/esmm
# Beam's SDK harness launcher, from the Beam release this project pins: the image then also serves
# as the workers' container of a remote runner (Dataflow's --sdk_container_image, a DOCKER
# environment on Flink or Spark), whose runner starts it with flags only (--id=... --control_endpoint=...).
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT: Beam's boot (sdks/python/container/boot.go) otherwise creates a
# venv under /opt/apache/beam-venv for each worker, which uid 1000 cannot write: workers run in /opt/esmm.
ENV PATH=/opt/esmm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
USER 1000:1000
WORKDIR /home/esmm
# Flags only (a Beam runner starting an SDK worker) run Beam's launcher; a command runs as given.
# kfp and Kubernetes manifests set the command themselves. Shipped configs are package data:
# `esmm --config aliccp`, or a mounted / gs:// YAML.
ENTRYPOINT ["/bin/sh", "-c", "case \"$1\" in --*) exec /opt/apache/beam/boot \"$@\";; *) exec \"$@\";; esac", "entrypoint"]
CMD ["esmm", "--help"]
