#!/bin/sh
# Checks that core/ keeps its layers (docs/architecture.md): a file in core/<layer>/ may
# include only headers of the layers its row below allows, and only the external libraries
# of its row; core/main.c (the command) may include any layer; plugins (and the public
# headers) include nothing of the host but the public headers, moelab/plugin.h and the
# optional moelab/plugin_aux.h, and of the external libraries only OpenMP's omp.h (the
# host's own runtime: plugin.h, Threads). Run by `make test`; prints every violation as
# file:line and exits 1 when there is one.
#
#   sh tools/check-layers.sh [ROOT]     check ROOT (default: the repository)
#   sh tools/check-layers.sh --self-test  the check must catch violations planted in a copy
#
# Internal headers are included by layer-qualified path ("nn/params.h"); an unqualified
# "x.h" is a violation too, so that every dependency is visible where it is made.
set -u

# layer: the layers it may include (itself included) | external headers it may include
RULES='
base|base|
nn|base nn|cblas.h omp.h
plugin|base nn plugin|dlfcn.h cblas.h omp.h
model|base nn plugin model|cblas.h omp.h
data|base data|zlib.h stb/stb_image.h stb/stb_image_write.h omp.h
io|base nn plugin model data io|yaml.h zlib.h
run|base nn plugin model data io run|cblas.h omp.h mpi.h
lua|base nn plugin model data io run lua|lua.h lauxlib.h lualib.h
study|base nn plugin model data io run study|
'
# the public headers, core/include/moelab/: all a plugin may include of moelab
PUBLIC='moelab/plugin.h moelab/plugin_aux.h'
# headers that name an external library (anything else in <...> is the C library or POSIX)
EXTERNAL='cblas.h omp.h dlfcn.h zlib.h stb/stb_image.h stb/stb_image_write.h yaml.h lua.h lauxlib.h lualib.h mpi.h'

check() {
    root="$1"
    bad=0
    for f in $(cd "$root" && find core plugins -name '*.[ch]' | sort); do
        case "$f" in
        core/include/*) layer=public ;;
        core/main.c) layer=main ;;
        core/*/*) layer=$(echo "$f" | cut -d/ -f2) ;;
        plugins/*) layer=plugin-so ;;
        *) layer=unknown ;;
        esac
        case "$layer" in
        public|plugin-so) allow=''; ext='omp.h' ;;
        main) allow='base nn plugin model data io run lua study'; ext='' ;;
        *)
            row=$(echo "$RULES" | grep "^$layer|")
            if [ -z "$row" ]; then
                echo "$f: core/$layer/ is not a layer of tools/check-layers.sh (add its row)"
                bad=1
                continue
            fi
            allow=$(echo "$row" | cut -d'|' -f2)
            ext=$(echo "$row" | cut -d'|' -f3)
            ;;
        esac
        out=$(awk -v f="$f" -v layer="$layer" -v allow=" $allow " -v ext=" $ext " -v external=" $EXTERNAL " -v public=" $PUBLIC " '
            /^[ \t]*#[ \t]*include/ {
                line = $0
                if (match(line, /"[^"]*"/)) {
                    h = substr(line, RSTART + 1, RLENGTH - 2)
                    if (layer == "public" || layer == "plugin-so") {
                        if (index(public, " " h " ") == 0)
                            printf "%s:%d: includes \"%s\": plugins and the public headers may include only%s\n", f, NR, h, public
                        next
                    }
                    if (h ~ /^moelab\//) next
                    n = index(h, "/")
                    if (n == 0) {
                        printf "%s:%d: includes \"%s\" without its layer (write \"<layer>/%s\")\n", f, NR, h, h
                        next
                    }
                    l = substr(h, 1, n - 1)
                    if (index(allow, " " l " ") == 0)
                        printf "%s:%d: includes \"%s\": layer %s may include only%s\n", f, NR, h, layer, allow
                } else if (match(line, /<[^>]*>/)) {
                    h = substr(line, RSTART + 1, RLENGTH - 2)
                    if (index(external, " " h " ") && index(ext, " " h " ") == 0)
                        printf "%s:%d: includes <%s>: layer %s may use only the external headers%s\n", f, NR, h, layer, (ext == " " ? " (none)" : ext)
                }
            }' "$root/$f")
        if [ -n "$out" ]; then
            echo "$out"
            bad=1
        fi
    done
    return $bad
}

if [ "${1:-}" = "--self-test" ]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/core/base" "$tmp/core/nn" "$tmp/core/lua" "$tmp/core/extra" "$tmp/plugins/routers"
    printf '#include "base/common.h"\n#include "model/moe.h"\n' > "$tmp/core/base/a.c"
    printf '#include <math.h>\n#include <lua.h>\n#include "params.h"\n' > "$tmp/core/nn/b.c"
    printf '#include <lua.h>\n#include "run/experiment.h"\n' > "$tmp/core/lua/ok.c"
    printf '#include "base/common.h"\n' > "$tmp/core/extra/c.c"
    printf '#include "moelab/plugin.h"\n#include "nn/ops.h"\n' > "$tmp/plugins/routers/d.c"
    printf '#include "moelab/plugin_aux.h"\n#include "moelab/plugin_private.h"\n' > "$tmp/plugins/routers/e.c"
    out=$(check "$tmp")
    rc=$?
    want='core/base/a.c:2: includes "model/moe.h"
core/extra/c.c: core/extra/ is not a layer
core/nn/b.c:2: includes <lua.h>
core/nn/b.c:3: includes "params.h" without its layer
plugins/routers/d.c:2: includes "nn/ops.h"
plugins/routers/e.c:2: includes "moelab/plugin_private.h"'
    ok=1
    [ "$rc" -ne 0 ] || { echo "check-layers self-test: violations planted, but the check passed"; ok=0; }
    echo "$want" | while IFS= read -r w; do
        echo "$out" | grep -qF "$w" || { echo "check-layers self-test: not reported: $w"; exit 1; }
    done || ok=0
    echo "$out" | grep -q 'core/lua/ok.c' && { echo "check-layers self-test: an allowed include was reported"; ok=0; }
    echo "$out" | grep -q 'plugins/routers/e.c:1' && { echo "check-layers self-test: moelab/plugin_aux.h was reported"; ok=0; }
    [ "$(echo "$out" | wc -l)" -eq 6 ] || { echo "check-layers self-test: expected 6 reports, got:"; echo "$out"; ok=0; }
    [ "$ok" -eq 1 ] && echo "check-layers self-test: passed (6 planted violations found)"
    [ "$ok" -eq 1 ]
    exit $?
fi

root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
if check "$root"; then
    echo "check-layers: core/ keeps its layers"
else
    echo "check-layers: layer violations above (the rules: tools/check-layers.sh, docs/architecture.md)"
    exit 1
fi
