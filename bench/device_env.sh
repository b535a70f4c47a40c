# Sourced by the device scripts that run the GPU build's rwr (bench/*_device.sh): `root` (the
# checkout), `out` ($OUT, where results go back), the carried libraries on LD_LIBRARY_PATH
# (scripts/device-deps.sh) and `rwr`, the binary scripts/device-build.sh built.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rwr=$root/build/gpu/bin/rwr
