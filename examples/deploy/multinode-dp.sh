#!/bin/sh
# Data parallelism across two nodes with vLLM 0.32's own launcher (no Ray): 4 engine cores, 2 per node, each on
# 4 GPUs (tensor parallel) of an 8-GPU node. Node 0 runs the API server and its two engine cores; node 1 runs two
# engine cores headless and connects to node 0. Set the same DECLAB_PLUGINS on both nodes: each node's processes
# load the plugins from their own environment.
#
#   node 0:  HEAD_IP=10.0.0.1 sh multinode-dp.sh head
#   node 1:  HEAD_IP=10.0.0.1 sh multinode-dp.sh worker
set -eu
: "${HEAD_IP:?the address of node 0}"
export DECLAB_PLUGINS="${DECLAB_PLUGINS:-momentum,extractive,cad,lqcd,asap}"
export VLLM_USE_V2_MODEL_RUNNER=0  # logits-level plugins use the V1 runner's interface in vLLM 0.32
MODEL=/models/your-model
case "${1:-}" in
  head)
    exec vllm serve "$MODEL" --served-model-name decoding-lab --host 0.0.0.0 --port 8000 \
      --tensor-parallel-size 4 --data-parallel-size 4 --data-parallel-size-local 2 \
      --data-parallel-address "$HEAD_IP" --data-parallel-rpc-port 13345 ;;
  worker)
    exec vllm serve "$MODEL" --headless \
      --tensor-parallel-size 4 --data-parallel-size 4 --data-parallel-size-local 2 --data-parallel-start-rank 2 \
      --data-parallel-address "$HEAD_IP" --data-parallel-rpc-port 13345 ;;
  *) echo "usage: HEAD_IP=ADDRESS $0 head|worker" >&2; exit 2 ;;
esac
