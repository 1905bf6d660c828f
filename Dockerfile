# One-command reproduction of 1-shot RLVR on one NVIDIA GPU:
#   docker build -t reprokit .
#   docker run --gpus all -v $HOME/.cache/huggingface:/root/.cache/huggingface -v $PWD/runs:/reprokit/runs reprokit
# Versions are pinned to releases that satisfy pyproject.toml (tests/test_docker.py checks this).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/root/.cache/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN pip install \
    torch==2.13.0 \
    lightning==2.6.6 \
    transformers==5.23.0 \
    peft==0.21.2 \
    bitsandbytes==0.50.2 \
    torchmetrics==1.9.0 \
    sympy==1.14.0 \
    tensorboard==2.21.0 \
    math-verify==0.9.0 \
    latex2sympy2_extended==1.11.0 \
    pyarrow==26.0.1 \
    datasets==5.2.0 \
    tokenizers==0.23.3 \
    "jsonargparse[signatures]==4.53.0" \
    pyyaml==6.0.3 \
    matplotlib==3.11.2 \
    tqdm==4.70.1

WORKDIR /reprokit
COPY pyproject.toml README.md ./
COPY reprokit ./reprokit
COPY presets ./presets
RUN pip install --no-deps -e .

VOLUME ["/root/.cache/huggingface", "/reprokit/runs"]
CMD ["python", "-m", "reprokit.recipes.one_shot"]
