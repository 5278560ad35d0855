#!/usr/bin/env bash
# conf/experiment/haq_mobilenet_v2_bismo_cloud.yaml end to end (search, fine-tune, export); extra args go to experiments/paper.py.
exec python "$(dirname "$0")/paper.py" haq_mobilenet_v2_bismo_cloud "$@"
