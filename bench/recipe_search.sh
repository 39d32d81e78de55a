#!/bin/sh
# The INT4 recipe search on DVC experiments (README "Better INT4 per byte"): each line queues one experiment that
# changes one searched variant's recipe, and the queue runs them one after another (each experiment is a
# `dvc repro` in a copy of the workspace that reruns only that variant's export/smoke/quality/package, check and
# report). Then `dvc exp show` compares them and `aipc pareto` prints the front per route. Data-aware experiments of
# one model share NNCF's statistics ($AIPC_STATISTICS_CACHE or ~/.cache/aipc/nncf-statistics): only the first
# computes them. '+' in `-S +key=value`: a key params.yaml does not spell out yet.
set -e
OV=variants.openvino.ov-int4-calib        # OpenVINO CPU: sym g128 ratio 0.6 + AWQ + scale estimation in params.yaml
NPU=variants.openvino.ov-int4-npu-calib   # OpenVINO NPU: sym channel-wise ratio 1.0, data-aware
ORT=variants.onnx_genai.ort-cpu-int4-kq   # ONNX Runtime GenAI CPU: the builder's k_quant, asym, block 32
q() { name=$1; shift; dvc exp run --queue -n "$name" "$@"; }

q ov-awq        -S $OV.scale_estimation=false
q ov-se         -S $OV.awq=false
q ov-gptq-se    -S $OV.awq=false -S +$OV.gptq=true
q ov-r10        -S $OV.ratio=1.0
q npu-se        -S $NPU.awq=false
q npu-gptq-se   -S $NPU.awq=false -S +$NPU.gptq=true
q ort-rtn       -S $ORT.algo_config=rtn -S $ORT.is_symmetric=true
q ort-default   -S $ORT.algo_config=default
q ort-kq-b64    -S +$ORT.block_size=64
dvc queue start -j "${JOBS:-1}"
