# Set-up, tests, and the two jobs. With no arguments `make extract` and `make train` run on
# the built-in demo corpus; give CORPUS=... (and STORE=... for train) to run on real data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data

# extraction on a real corpus: make extract CORPUS=/data/droid FORMAT=droid OUT=/data/store CHECKPOINT=vitg.pt
CORPUS ?=
FORMAT ?= droid
OUT ?= $(DATA)/store
CHECKPOINT ?=
PRESET ?= auto  # the dims of a transformers checkpoint's config.json, else vit_giant
EXTRACT_ARGS ?=
# training on a real store: make train STORE=/data/store RUN=/data/run TRAIN_ARGS="--steps 94500"
STORE ?=
RUN ?= $(DATA)/run
TRAIN_ARGS ?=

DEMO_CORPUS := $(DATA)/demo-corpus
DEMO_STORE := $(DATA)/demo-store
DEMO_RUN := $(DATA)/demo-run

.PHONY: setup test docs extract train demo bench bench-gpu bench-s3 sim-bench sim-push clean-demo

setup: $(VENV)/.installed

# torch==2.13.0 (the CPU wheel) only when no torch is importable, so a CUDA build stays
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest -q

# the command reference tables in docs/, from the config dataclasses (tests/test_docs.py checks them)
docs: setup
	$(PY) docs/reference.py

extract: setup
ifeq ($(CORPUS),)
	test -d $(DEMO_CORPUS) || $(PY) cli.py demo-corpus $(DEMO_CORPUS)
	$(PY) cli.py extract --corpus $(DEMO_CORPUS) --out $(DEMO_STORE) --preset vit_demo --camera wrist \
		--episodes-per-unit 16 --workers 2 $(EXTRACT_ARGS)
else
	$(PY) cli.py extract --corpus $(CORPUS) --format $(FORMAT) --out $(OUT) --preset $(PRESET) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(EXTRACT_ARGS)
endif

train: setup
ifeq ($(STORE),)
	test -d $(DEMO_STORE) || $(MAKE) extract
	rm -rf $(DEMO_RUN)
	$(PY) cli.py train --store $(DEMO_STORE) --out $(DEMO_RUN) --preset ac_demo --steps 900 --batch-size 8 \
		--lr 3e-3 --start-lr 6e-4 --anneal 180 --val-every 300 --ckpt-every 300 --workers 1 $(TRAIN_ARGS)
else
	$(PY) cli.py train --store $(STORE) --out $(RUN) $(TRAIN_ARGS)
endif

# the embedded default end to end: demo corpus -> features -> trained world model
demo: extract train

# the CPU benchmarks, each writing its section of BENCHMARKS.md (bench gpu needs a CUDA device)
bench: setup
	$(PY) cli.py bench attention
	$(PY) cli.py bench plan
	$(PY) cli.py bench cached-vs-online
	$(PY) cli.py bench extract
	$(PY) cli.py bench extract --preset vit_g_mini --batch 32
	$(PY) cli.py bench memory
	$(PY) cli.py bench codecs
	$(PY) cli.py bench loader

# the GPU sections (a CUDA device; not yet run here): ViT-g and ac_vitg speed,
# cached vs online at the real pair, planning at the paper's CEM, the extraction job with ViT-g
bench-gpu: setup
	$(PY) cli.py bench gpu
	$(PY) cli.py bench cached-vs-online --pairs vit_giant:ac_vitg --batch 8 --workers 8
	$(PY) cli.py bench plan --presets ac_vitg --horizons 1,3
	$(PY) cli.py bench extract --preset vit_giant --workers 8

# bench loader and extraction from an S3-compatible server on loopback (moto, from the test extra), stopped afterwards
S3_BENCH_ENV := AWS_ENDPOINT_URL=http://127.0.0.1:5555 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
	AWS_DEFAULT_REGION=us-east-1
bench-s3: setup
	$(VENV)/bin/moto_server -H 127.0.0.1 -p 5555 >/dev/null 2>&1 & server=$$!; trap "kill $$server" EXIT; sleep 3; \
	$(S3_BENCH_ENV) $(PY) -c "import boto3; boto3.client('s3').create_bucket(Bucket='bench')" && \
	$(S3_BENCH_ENV) $(PY) cli.py bench loader --store-url s3://bench/loader --frames 1320 $(BENCH_ARGS) && \
	$(S3_BENCH_ENV) $(PY) cli.py bench extract --corpus-url s3://bench/corpus --preset vit_g_mini --batch 32 \
		--repeats 3 $(BENCH_ARGS)

# closed loop (~2.3 h on 2 CPU cores, from its parts): reach in the demo world on the demo run's checkpoints;
# then gym-pusht filmed by its agent camera, collected, extracted (random-weight vit_demo, 128 px, 10 fps: 2-D state-delta
# actions) and trained here, reach and push; then through its top camera at 256 px with ImageNet EfficientNet-Lite0
# features at 2 fps, the map at stride 32 (bench encoders, ~46 min, the [pretrained] extra; SIM_ENCODERS=
# effnet-imagenet,effnet-random adds the random-weight row beside it, ~45 min more)
SIM_DIR := $(DATA)/sim
SIM_ENCODERS := effnet-imagenet
SIM_BENCH := --horizon 1 --budget 48 --samples 25,50,100,200 --iterations 6 $(BENCH_ARGS)
sim-bench: setup
	test -f $(DEMO_RUN)/step_00000900.pt || $(MAKE) demo
	$(PY) cli.py bench sim --run $(DEMO_RUN) --env demo --task reach $(SIM_BENCH)
	test -f $(SIM_DIR)/pusht-corpus/sim-000000.tar || $(PY) cli.py sim collect --env pusht --camera agent \
		--episodes 400 --steps 80 --size 128 --out $(SIM_DIR)/pusht-corpus
	test -d $(SIM_DIR)/pusht-store || $(PY) cli.py extract --format webdataset --corpus $(SIM_DIR)/pusht-corpus \
		--out $(SIM_DIR)/pusht-store --preset vit_demo --fps 10 --actions state-delta --workers 1 \
		--episodes-per-unit 100
	test -f $(SIM_DIR)/pusht-run/step_00003000.pt || $(PY) cli.py train --store $(SIM_DIR)/pusht-store \
		--out $(SIM_DIR)/pusht-run --preset ac_demo --steps 3000 --batch-size 8 --lr 1e-3 --start-lr 2e-4 \
		--anneal 600 --val-every 500 --ckpt-every 1000 --workers 1
	$(PY) cli.py bench sim --run $(SIM_DIR)/pusht-run --env pusht --task reach --size 128 $(SIM_BENCH) \
		--samples 25,50,100
	$(PY) cli.py bench sim --run $(SIM_DIR)/pusht-run --env pusht --task push --size 128 $(SIM_BENCH) \
		--samples 25,50,100
	$(PY) cli.py bench encoders --directory $(SIM_DIR)/encoders --fps 2 --size 256 --feature-stride 32 \
		--encoders $(SIM_ENCODERS) --cameras top --conditionings token --episodes 10 --oracle-episodes 5

# push through gym-pusht's top camera at its best measured recipe, apart from sim-bench to keep that under 2.5 h
# (~1.8 h on 2 CPU cores: collection and extraction 20 min, training 43, the two evaluations 47): 1200 scripted
# episodes at 256 px, ImageNet EfficientNet-Lite0 features at 2 fps (the map at stride 32, the [pretrained] extra),
# ac_demo trained 9000 steps; CEM 100 x 6 over 3 actions, every planned frame and the goal's state in the energy;
# 60 tasks on the bench's task seed and 60 fresh ones
PUSH_DIR := $(SIM_DIR)/push-top
sim-push: setup
	test -f $(PUSH_DIR)/corpus/sim-000000.tar || $(PY) cli.py sim collect --env pusht --camera top --episodes 1200 \
		--steps 80 --size 256 --out $(PUSH_DIR)/corpus
	test -d $(PUSH_DIR)/store || $(PY) cli.py extract --format webdataset --corpus $(PUSH_DIR)/corpus \
		--out $(PUSH_DIR)/store --encoder efficientnet-lite0 --image-size 256 --feature-stride 32 --fps 2 \
		--actions state-delta --workers 1 --episodes-per-unit 100
	test -f $(PUSH_DIR)/run/step_00009000.pt || $(PY) cli.py train --store $(PUSH_DIR)/store --out $(PUSH_DIR)/run \
		--preset ac_demo --steps 9000 --batch-size 8 --lr 1e-3 --start-lr 2e-4 --anneal 1800 --val-every 0 \
		--ckpt-every 9000 --workers 1
	for seed in 0 1; do $(PY) cli.py bench sim --run $(PUSH_DIR)/run --env pusht --task push --size 256 --horizon 3 \
		--budget 48 --samples 100 --iterations 6 --episodes 60 --energy all --state-weight 0.03 --task-seed $$seed \
		$(BENCH_ARGS) || exit 1; done

clean-demo:
	rm -rf $(DEMO_CORPUS) $(DEMO_STORE) $(DEMO_RUN)
