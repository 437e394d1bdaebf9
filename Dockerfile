# The serving image: gunicorn + Django + OpenVINO running ResNet50 from an IR baked in at
# build time. TensorFlow is only in the build stage (to fetch the Keras weights and
# convert them); the final stage never imports it.
#
#   docker build -t classifier .                                 # ImageNet weights (needs internet)
#   docker build --build-arg WEIGHTS=random -t classifier .      # offline: untrained model
#   docker build --build-arg MODEL=models/shapes -t classifier:shapes .  # your own classes
#   docker build --build-arg BASE_IMAGE=local/bookworm-python ...  # any Debian-like base with python3, venv, CA certs
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .build/ca.crt, if present, is a CA bundle for pip (networks whose proxy has its own CA;
# scripts/container-test.sh puts the host's there). It stays in this stage only.
COPY requirements.txt requirements-serve.txt .build/ca.cr[t] ./
RUN if [ -s ca.crt ]; then export PIP_CERT=/src/ca.crt; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --quiet -r requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet -r requirements-serve.txt \
    && /opt/venv/bin/pip uninstall --quiet --yes pip \
    # The serving image runs an IR on the CPU: drop OpenVINO's GPU and NPU plugins and
    # its converters from other frameworks (~70 MB).
    && find /opt/venv/lib/python3*/site-packages/openvino/libs \
        \( -name 'libopenvino_intel_[gn]pu_plugin.so' \
           -o \( -name 'libopenvino_*_frontend.so*' ! -name 'libopenvino_ir_frontend.so*' \) \) \
        -delete \
    # Nor the packages' own test suites.
    && find /opt/venv/lib/python3*/site-packages -depth -type d -name tests -exec rm -rf {} +
COPY . .
# imagenet: Keras downloads the weights once, here; random: an untrained model (offline).
ARG WEIGHTS=imagenet
# Your own classes: a model directory from `manage.py train_head` (or a model.keras with
# its labels.txt), its path in the build context; empty: ImageNet's 1000 classes.
ARG MODEL=
RUN if [ -n "$MODEL" ]; then mkdir -p /opt/model && cp -r "$MODEL" /opt/model/classes; fi \
    && CLASSIFIER_WEIGHTS="$WEIGHTS" CLASSIFIER_MODEL="${MODEL:+/opt/model/classes}" \
    KERAS_HOME=/tmp/keras DJANGO_SECRET_KEY=build \
    /opt/build/bin/python manage.py export_openvino /opt/model/ir \
    && DJANGO_SECRET_KEY=build DJANGO_STATIC_ROOT=/opt/static \
    /opt/venv/bin/python manage.py collectstatic --noinput --verbosity 0

FROM ${BASE_IMAGE}
ARG WEIGHTS=imagenet
ARG MODEL=
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MALLOC_ARENA_MAX=2 \
    GUNICORN_BIND=0.0.0.0:8000 \
    DJANGO_STATIC_ROOT=/opt/static \
    CLASSIFIER_WEIGHTS=${WEIGHTS} CLASSIFIER_MODEL=${MODEL:+/opt/model/classes} \
    CLASSIFIER_ENGINE=openvino \
    CLASSIFIER_OPENVINO_IR=/opt/model/ir CLASSIFIER_PRECISION=bf16
# No useradd on minimal bases: write the entries directly.
RUN echo "app:x:10001:10001:classifier:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "app:x:10001:" >> /etc/group
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/model /opt/model
COPY --from=build /opt/static /opt/static
WORKDIR /app
COPY manage.py gunicorn.conf.py ./
COPY webapp webapp
COPY classifier classifier
COPY templates templates
COPY static static
# Compile once here: the root filesystem is read-only at run time.
RUN python3 -m compileall -q /app /opt/venv
USER 10001:10001
EXPOSE 8000
# exec form: gunicorn is PID 1 and receives SIGTERM from `docker stop` / the kubelet.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "webapp.wsgi"]
