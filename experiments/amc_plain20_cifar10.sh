#!/usr/bin/env bash
# conf/experiment/amc_plain20_cifar10.yaml end to end (search, fine-tune, export); extra args go to experiments/paper.py.
exec python "$(dirname "$0")/paper.py" amc_plain20_cifar10 "$@"
