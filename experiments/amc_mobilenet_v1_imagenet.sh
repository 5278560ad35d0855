#!/usr/bin/env bash
# conf/experiment/amc_mobilenet_v1_imagenet.yaml end to end (search, fine-tune, export); extra args go to experiments/paper.py.
exec python "$(dirname "$0")/paper.py" amc_mobilenet_v1_imagenet "$@"
