#!/bin/sh
# Installs whichever Debian packages moelab needs and this machine lacks (apt-get; sudo
# when not root). Quiet when everything is present.
set -e
PKGS="build-essential pkg-config python3 liblua5.4-dev libopenblas-openmp-dev libyaml-dev zlib1g-dev check libstb-dev dataset-fashion-mnist gnuplot-nox"
[ "${MOELAB_BENCH:-0}" = 1 ] && PKGS="$PKGS python3-torch"
# make fuzz: clang, its libFuzzer/sanitizer runtimes (libclang_rt.fuzzer*.a) and OpenMP
[ "${MOELAB_FUZZ:-0}" = 1 ] && PKGS="$PKGS clang-14 libclang-rt-14-dev libomp-14-dev"
[ "${MOELAB_VALGRIND:-0}" = 1 ] && PKGS="$PKGS valgrind"
# make test (and so make asan): SLURM's controller, node daemon, client commands and munge,
# for the single-node cluster tests/check_slurm.c starts itself (tools/slurm-cluster.sh).
# The packages' own services are not used (on a machine with systemd, installing them
# enables munge, slurmd and slurmctld; the latter two do not start without /etc/slurm).
[ "${MOELAB_SLURM:-0}" = 1 ] && PKGS="$PKGS slurmctld slurmd slurm-client munge"
# make test and make bench: OpenMPI, which the build finds through mpicc (data parallelism,
# run/dist.c) and whose mpirun tests/check_mpi.c and bench/run.sh start themselves
[ "${MOELAB_MPI:-0}" = 1 ] && PKGS="$PKGS libopenmpi-dev openmpi-bin"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "moelab: installing missing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
