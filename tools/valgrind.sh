#!/bin/sh
# make valgrind: runs a representative subset of moelab under valgrind (memcheck) from a
# build without AVX-512 (valgrind 3.19 stops at the first AVX-512 instruction):
#   - the demo config for one short epoch (Fashion-MNIST, the MLP, softmax_topk, two loss
#     plugins, checkpoints, Lua script), threads 1;
#   - Check suites in-process (CK_FORK=no, so valgrind sees the tests themselves);
#     MOELAB_UNDER_VALGRIND relaxes check_data's load-time bound for all of Fashion-MNIST.
# Any memcheck error or definite/indirect leak fails the run; logs in BUILD/valgrind-logs/.
#   tools/valgrind.sh BUILD [SUITE...]      (VALGRIND_DEMO=0 skips the demo epoch)
BUILD="$1"; shift
SUITES="${*:-check_config check_safetensors check_data check_fuzz check_ops check_moe}"
LOGS="$BUILD/valgrind-logs"
rm -rf "$LOGS"; mkdir -p "$LOGS"
# OpenBLAS: a Haswell (AVX2) kernel, and no re-exec to pick SkylakeX (core/main.c)
export OPENBLAS_CORETYPE=Haswell MOELAB_BLAS_CORETYPE=Haswell MOELAB_NO_REEXEC=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 CK_FORK=no MOELAB_BUILD="$BUILD" MOELAB_UNDER_VALGRIND=1
VG="valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
--errors-for-leak-kinds=definite,indirect --track-origins=yes --num-callers=30 -q"
fail=0
check() { # name, command...
    name="$1"; shift
    t0=$(date +%s)
    $VG --log-file="$LOGS/$name.log" "$@" > "$LOGS/$name.out" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    if [ "$rc" -ne 0 ] || [ -s "$LOGS/$name.log" ]; then
        echo "valgrind $name: FAILED (exit $rc, ${dt} s)"
        tail -n 40 "$LOGS/$name.log" "$LOGS/$name.out"
        fail=1
    else
        echo "valgrind $name: clean (${dt} s)"
    fi
}
if [ "${VALGRIND_DEMO:-1}" != 0 ]; then
    tmp=$(mktemp -d /tmp/moelab-valgrind-XXXXXX)
    check demo "$BUILD/moelab" run configs/demo.yaml train.epochs=1 train.threads=1 \
        data.train_images=1024 data.val_images=256 results.dir="$tmp" results.run_id=vg
    rm -rf "$tmp"
fi
for s in $SUITES; do
    check "$s" "$BUILD/tests/$s"
done
exit "$fail"
