#!/usr/bin/env bash
# conf/experiment/haq_resnet50_size.yaml end to end (search, fine-tune, export); extra args go to experiments/paper.py.
exec python "$(dirname "$0")/paper.py" haq_resnet50_size "$@"
