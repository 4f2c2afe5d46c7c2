# One image for every embedflow job: the Dataflow workers of the Beam jobs (custom
# container) and the Vertex AI trainer (CPU or GPU). Dependencies are the versions
# pinned in setup.py.
#
#   docker build -t IMAGE .
#   docker run --rm --entrypoint embedflow IMAGE run --help
#
# Dataflow starts its workers through the image's entrypoint, which must be the Beam
# SDK's boot program (the Beam jobs pass --sdk_container_image=IMAGE
# --sdk_location=container). Everything else names `embedflow` as the command:
# Vertex AI with `--command=embedflow`, Cloud Build steps with `entrypoint: embedflow`.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam

FROM python:3.11-slim
# The Beam worker harness (boot program) of the same Beam version as setup.py pins.
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENV PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PIP_NO_CACHE_DIR=1
WORKDIR /app
# g++ builds the trainer's fused CPU kernel on first use (trainer/kernels), for the
# processor of the machine that runs it; without it training falls back to TF ops.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# Dependencies first, so code changes reuse this layer. tensorflow[and-cuda] adds the
# CUDA libraries TensorFlow needs on a GPU (Vertex AI supplies the driver); on a CPU
# machine they are simply unused.
COPY setup.py ./
RUN python -c "import ast,sys; t=ast.parse(open('setup.py').read()); \
[print(e.value) for n in ast.walk(t) if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'REQUIRED' \
 for e in n.value.elts]" > /tmp/requirements.txt \
 && sed -i 's/^tensorflow==/tensorflow[and-cuda]==/' /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY embedflow ./embedflow
COPY pipelines ./pipelines
COPY trainer ./trainer
COPY schemas ./schemas
COPY sample ./sample
COPY cloud ./cloud
RUN pip install --no-deps . && embedflow run --help > /dev/null
ENTRYPOINT ["/opt/apache/beam/boot"]
