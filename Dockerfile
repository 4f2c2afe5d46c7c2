# The embedflow image, in two variants of one Dockerfile (build argument ACCELERATOR):
#
#   cpu (default)  the Dataflow workers of the Beam jobs (custom container), the build's
#                  own steps and training on a CPU. No CUDA libraries, so Dataflow workers
#                  start without pulling several GB they never use.
#   gpu            the Vertex AI trainer on a GPU: the same, plus TensorFlow's CUDA
#                  libraries (tensorflow[and-cuda], same version; Vertex AI supplies the
#                  driver).
#
#   docker build -t IMAGE .
#   docker build --build-arg ACCELERATOR=gpu -t GPU_IMAGE .
#   docker run --rm --entrypoint embedflow IMAGE run --help
#
# Dependencies are the versions pinned in setup.py (cloud/image_requirements.py turns the
# pins into the variant's requirements). There is no TPU variant: no TensorFlow TPU build
# matches the pinned TensorFlow yet (README, "Google Cloud").
#
# Dataflow starts its workers through the image's entrypoint, which must be the Beam
# SDK's boot program (the Beam jobs pass --sdk_container_image=IMAGE). Everything else
# names `embedflow` as the command: Vertex AI with `--command=embedflow`, Cloud Build
# steps with `entrypoint: embedflow`.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam

FROM python:3.11-slim
# The Beam worker harness (boot program); its version is checked against setup.py below.
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENV PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PIP_NO_CACHE_DIR=1
WORKDIR /app
# g++ builds the trainer's fused CPU kernel on first use (trainer/kernels), for the
# processor of the machine that runs it; without it training falls back to TF ops.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# Dependencies first, so code changes reuse this layer. The build arguments are declared
# here, not above, so both variants share the layers before this one.
ARG BEAM_VERSION
ARG ACCELERATOR=cpu
COPY setup.py ./
COPY cloud/image_requirements.py /tmp/
RUN python /tmp/image_requirements.py "$ACCELERATOR" --beam-version "$BEAM_VERSION" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# Every package setup.py installs (tests/test_cloudbuild.py checks the two lists agree).
COPY embedflow ./embedflow
COPY core ./core
COPY jobs ./jobs
COPY pipelines ./pipelines
COPY trainer ./trainer
COPY schemas ./schemas
COPY sample ./sample
COPY cloud ./cloud
RUN pip install --no-deps . && embedflow run --help > /dev/null
ENTRYPOINT ["/opt/apache/beam/boot"]
