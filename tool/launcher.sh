# Sourced by run_train.sh and run_infer.sh: RUN is the command that starts a Python entry
# point, plain "$PY" or torchrun with NPROC processes on this machine (README: Scaling).
RUN=("$PY")
if [ "$NPROC" -gt 1 ]; then
    RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
fi
