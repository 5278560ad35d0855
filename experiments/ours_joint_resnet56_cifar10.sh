#!/usr/bin/env bash
# conf/experiment/ours_joint_resnet56_cifar10.yaml end to end (search, fine-tune, export); extra args go to experiments/paper.py.
exec python "$(dirname "$0")/paper.py" ours_joint_resnet56_cifar10 "$@"
