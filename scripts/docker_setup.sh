#!/usr/bin/env bash
# Install a Docker engine from Debian's packages, start it, and build the rlm sandbox image.
#
# No image registry is reachable from this project's machines, so the image is made from a
# debootstrap root filesystem and loaded with `docker import`. Idempotent: each step checks
# first and does nothing when its result is already there.
#
# Usage: scripts/docker_setup.sh [--rebuild] [--help]
# Environment (all optional):
#   RLM_SANDBOX_IMAGE   image to build            (default rlm-sandbox:latest)
#   RLM_CACHE_DIR       debootstrap package cache (default /var/cache/rlm)
#   RLM_DOCKERD_LOG     dockerd's log file        (default /var/log/rlm-dockerd.log)
#   RLM_DEBIAN_MIRROR   mirror for debootstrap    (default: read from the apt sources)
#   RLM_DOCKER_STORAGE_DRIVER  dockerd storage driver (default: overlay2 when an overlay mount
#                       works here, else vfs)
set -euo pipefail

IMAGE="${RLM_SANDBOX_IMAGE:-rlm-sandbox:latest}"
CACHE_DIR="${RLM_CACHE_DIR:-/var/cache/rlm}"
DOCKERD_LOG="${RLM_DOCKERD_LOG:-/var/log/rlm-dockerd.log}"
STORAGE_DRIVER="${RLM_DOCKER_STORAGE_DRIVER:-}"
# python3 (not only python3-minimal): the sandbox runtime needs json, asyncio, dataclasses, ...
INCLUDE_PKGS="python3-minimal,python3"
SANDBOX_UID=1000
# Bump when the recipe below changes, so an image built by an older recipe is rebuilt.
RECIPE_VERSION=1
REBUILD=0

log() { printf '[docker_setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[docker_setup] ERROR: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

SCRIPT_START=$SECONDS
STEP_NAME=""
STEP_START=0
step_begin() { STEP_NAME="$1"; STEP_START=$SECONDS; log "== $1"; }
step_end() { log "== $STEP_NAME: done in $((SECONDS - STEP_START)) s"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root (run with sudo)"; }

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

# ---------------------------------------------------------------------------------------------
# 1. Packages: dockerd (docker.io) and debootstrap.
# ---------------------------------------------------------------------------------------------
install_packages() {
    local pkgs=()
    command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
    if [ "${#pkgs[@]}" -eq 0 ]; then
        log "dockerd ($(command -v dockerd)) and debootstrap already installed"
        return
    fi
    need_root "installing ${pkgs[*]}"
    apt_update_once
    local pkg candidate
    for pkg in "${pkgs[@]}"; do
        candidate="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            die "no installable candidate for $pkg in the apt sources"
        fi
        log "will install $pkg $candidate"
    done
    # Keep the package's init script from starting a dockerd with default options (overlay2,
    # iptables): this script starts its own. Only add a policy-rc.d when none exists.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0 apt_log=/var/log/rlm-docker-setup-apt.log
    log "apt-get install ${pkgs[*]} (output: $apt_log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        >"$apt_log" 2>&1 || rc=$?
    if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${pkgs[*]} failed (exit $rc)"
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap still missing after install"
    log "installed: $(dockerd --version)"
}

# ---------------------------------------------------------------------------------------------
# 2. Engine: start dockerd unless `docker info` already answers.
# ---------------------------------------------------------------------------------------------
docker_ok() { docker info >/dev/null 2>&1; }

# overlay2 starts a container in ~0.5 s here; vfs copies the whole image (~4 s). Use overlay2
# only when this kernel lets us mount an overlay on the filesystem that holds /var/lib/docker.
pick_storage_driver() {
    if [ -n "$STORAGE_DRIVER" ]; then return; fi
    local probe
    mkdir -p /var/lib
    probe="$(mktemp -d /var/lib/rlm-overlay-probe.XXXXXX)"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" \
        2>/dev/null; then
        umount "$probe/merged"
        STORAGE_DRIVER=overlay2
    else
        STORAGE_DRIVER=vfs
    fi
    rm -rf "$probe"
    log "storage driver: $STORAGE_DRIVER"
}

dockerd_running() {
    local pid
    [ -s /var/run/docker.pid ] || return 1
    pid="$(cat /var/run/docker.pid)"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

start_engine() {
    command -v docker >/dev/null 2>&1 || die "no docker CLI on PATH"
    if docker_ok; then
        log "engine already running: $(docker version --format 'server {{.Server.Version}}')"
        return
    fi
    if [ -S /var/run/docker.sock ] && [ "$(id -u)" -ne 0 ] && [ ! -w /var/run/docker.sock ]; then
        die "cannot use /var/run/docker.sock as $(id -un): run as root or join group docker"
    fi
    need_root "starting dockerd"
    if dockerd_running; then
        log "dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet; waiting"
    else
        pick_storage_driver
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # No bridge, no iptables, no forwarding: containers only ever run with --network none.
        local args=(
            --storage-driver="$STORAGE_DRIVER"
            --iptables=false
            --ip6tables=false
            --ip-forward=false
            --ip-masq=false
            --bridge=none
            --userland-proxy=false
            --exec-opt native.cgroupdriver=cgroupfs
        )
        log "starting dockerd ${args[*]} (log: $DOCKERD_LOG)"
        setsid nohup dockerd "${args[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until docker_ok; do
        if [ "$waited" -ge 60 ]; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "docker info still fails after 60 s; see $DOCKERD_LOG"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine up after ${waited} s: $(docker version --format 'server {{.Server.Version}}')"
}

# ---------------------------------------------------------------------------------------------
# 3. Image: debootstrap rootfs -> docker import.
# ---------------------------------------------------------------------------------------------

# Print the first mirror URI that serves "$1" (a suite) with component main, from the apt
# sources in either format: one-line (*.list) or deb822 (*.sources).
# Other files to read instead may follow the suite (used to test the parser).
find_mirror() {
    local suite="$1" f
    shift
    local files=("$@")
    if [ "${#files[@]}" -eq 0 ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && files+=("$f")
        done
    fi
    [ "${#files[@]}" -gt 0 ] || return 0
    awk -v suite="$suite" '
        function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
        function has(list, word,   n, a, i) {
            n = split(list, a, /[ \t]+/)
            for (i = 1; i <= n; i++) if (a[i] == word) return 1
            return 0
        }
        function flush() {
            if (!found && enabled && has(types, "deb") && has(suites, suite) && has(comps, "main")) {
                split(uris, u, /[ \t]+/); print u[1]; found = 1
            }
            types = ""; uris = ""; suites = ""; comps = ""; enabled = 1
        }
        FNR == 1 { if (deb822) flush(); deb822 = (FILENAME ~ /\.sources$/); enabled = 1 }
        deb822 {
            if ($0 ~ /^[ \t]*#/) next             # a comment line does not end a stanza
            line = $0
            if (trim(line) == "") { flush(); next }
            if (line ~ /^[ \t]/) next   # continuation line (e.g. an inline key)
            key = tolower(trim(substr(line, 1, index(line, ":") - 1)))
            val = trim(substr(line, index(line, ":") + 1))
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "components") comps = val
            else if (key == "enabled") enabled = (tolower(val) != "no")
            next
        }
        {
            line = $0; sub(/#.*/, "", line)
            gsub(/\[[^]]*\]/, "", line)            # drop [ options ]
            n = split(trim(line), a, /[ \t]+/)
            if (!found && n >= 4 && a[1] == "deb" && a[3] == suite) {
                for (i = 4; i <= n; i++) if (a[i] == "main") { print a[2]; found = 1; break }
            }
        }
        END { if (deb822) flush() }
    ' "${files[@]}"
}

# Download the packages once into a tarball (debootstrap --make-tarball). Its Packages index is
# cut down to the downloaded packages: debootstrap parses that file with perl several times,
# and the full index (~50 MB) made the offline install about 40 s slower.
make_package_tarball() {
    local tarball="$1" suite="$2" mirror="$3" work="$4"
    shift 4
    local t0=$SECONDS dl="$work/dl" tb="$work/tarball"
    log "downloading packages from $mirror into $tarball"
    debootstrap "$@" --make-tarball="$tarball.part" "$suite" "$dl" "$mirror" \
        >"$work/debootstrap-dl.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap-dl.log" >&2; die "debootstrap --make-tarball failed"; }
    mkdir -p "$tb"
    tar -C "$tb" -xzf "$tarball.part"
    local names="$work/names" index
    find "$tb/var/cache/apt/archives" -name '*.deb' -printf '%f\n' | sed 's/_.*//' | sort -u >"$names"
    [ -s "$names" ] || die "the package tarball holds no .deb files"
    for index in "$tb"/var/lib/apt/lists/*_Packages; do
        [ -f "$index" ] || continue
        awk 'NR == FNR { keep[$1] = 1; next } /^Package: / { k = ($2 in keep) } k { print }' \
            "$names" "$index" >"$index.cut"
        mv "$index.cut" "$index"
    done
    (cd "$tb" && tar -czf "$tarball.part" .)
    rm -rf "$tb" "$dl"
    mv "$tarball.part" "$tarball"
    log "package tarball ready: $(wc -l <"$names") packages, $(du -h "$tarball" | cut -f1)," \
        "$((SECONDS - t0)) s"
}

image_ok() {
    local v
    v="$(docker image inspect --format '{{index .Config.Labels "org.rlm.sandbox.recipe"}}' \
        "$IMAGE" 2>/dev/null)" || return 1
    [ "$v" = "$RECIPE_VERSION" ]
}

build_image() {
    if [ "$REBUILD" -eq 0 ] && image_ok; then
        log "image $IMAGE already present (recipe $RECIPE_VERSION)"
        return
    fi
    need_root "building the image (debootstrap)"
    local suite arch mirror
    # shellcheck disable=SC1091
    suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release"
    arch="$(dpkg --print-architecture)"
    mirror="${RLM_DEBIAN_MIRROR:-$(find_mirror "$suite")}"
    [ -n "$mirror" ] || die "no apt source serves '$suite main'; set RLM_DEBIAN_MIRROR"
    log "suite $suite, arch $arch, mirror $mirror"

    mkdir -p "$CACHE_DIR"
    local tarball="$CACHE_DIR/debootstrap-$suite-$arch-minbase-${INCLUDE_PKGS//,/+}.tgz"
    local work
    work="$(mktemp -d /var/tmp/rlm-rootfs.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    local common=(--variant=minbase --include="$INCLUDE_PKGS" --arch="$arch")

    local root="$work/rootfs" attempt
    for attempt in 1 2; do
        if [ ! -s "$tarball" ]; then
            make_package_tarball "$tarball" "$suite" "$mirror" "$work" "${common[@]}"
        else
            log "using cached package tarball $tarball"
        fi
        local t1=$SECONDS
        log "debootstrap $suite into $root (offline, from the tarball)"
        rm -rf "$root"
        # The rootfs is thrown away on failure, so dpkg need not fsync every file it unpacks.
        mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
        echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/00rlm-unsafe-io"
        if debootstrap "${common[@]}" --unpack-tarball="$tarball" "$suite" "$root" "$mirror" \
            >"$work/debootstrap.log" 2>&1; then
            rm -f "$root/etc/dpkg/dpkg.cfg.d/00rlm-unsafe-io"
            log "rootfs ready ($((SECONDS - t1)) s)"
            break
        fi
        tail -n 30 "$work/debootstrap.log" >&2
        [ "$attempt" -eq 1 ] || die "debootstrap failed twice; see the log above"
        log "debootstrap failed; dropping the cached tarball and downloading again"
        rm -f "$tarball"
    done

    # Strip what a sandbox never needs.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/var/log/*.log \
        "$root"/var/log/apt/* "$root"/debootstrap
    find "$root"/usr/lib/python3* -name '__pycache__' -prune -exec rm -rf {} + 2>/dev/null || true

    # A non-root user, so containers can run with --user 1000:1000.
    if grep -q ":x:$SANDBOX_UID:" "$root/etc/passwd" || grep -q "^sandbox:" "$root/etc/passwd"; then
        die "uid $SANDBOX_UID or user 'sandbox' already exists in the rootfs"
    fi
    echo "sandbox:x:$SANDBOX_UID:$SANDBOX_UID:rlm sandbox:/home/sandbox:/usr/sbin/nologin" \
        >>"$root/etc/passwd"
    echo "sandbox:x:$SANDBOX_UID:" >>"$root/etc/group"
    if [ -f "$root/etc/shadow" ]; then echo "sandbox:*:19000:0:99999:7:::" >>"$root/etc/shadow"; fi
    if [ -f "$root/etc/gshadow" ]; then echo "sandbox:*::" >>"$root/etc/gshadow"; fi
    mkdir -p "$root/home/sandbox"
    chown "$SANDBOX_UID:$SANDBOX_UID" "$root/home/sandbox"
    chmod 750 "$root/home/sandbox"
    log "rootfs size after stripping: $(du -sh "$root" | cut -f1)"

    log "docker import -> $IMAGE"
    tar --numeric-owner -C "$root" -c . | docker import \
        --change 'CMD ["python3"]' \
        --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1' \
        --change 'WORKDIR /home/sandbox' \
        --change "LABEL org.rlm.sandbox.recipe=$RECIPE_VERSION org.rlm.sandbox.suite=$suite" \
        --message "rlm sandbox: debootstrap $suite minbase + $INCLUDE_PKGS" \
        - "$IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    log "image built: $(docker image inspect --format '{{.Id}} {{.Size}} bytes' "$IMAGE")"
}

# Run one container with the flags the Docker environment uses, so a missing cgroup controller
# or seccomp problem shows up here and not in the middle of a run.
verify_image() {
    local out want="[1, $SANDBOX_UID]"
    out="$(docker run --rm --network none --read-only --tmpfs /tmp \
        --user "$SANDBOX_UID:$SANDBOX_UID" --memory 256m --pids-limit 64 --cap-drop ALL \
        --security-opt no-new-privileges "$IMAGE" \
        python3 -c 'import asyncio, json, os; print(json.dumps([1, os.getuid()]))')" \
        || die "verification container failed"
    [ "$out" = "$want" ] || die "verification printed '$out', expected '$want'"
    log "verified: python3 runs in $IMAGE as uid $SANDBOX_UID, --network none, read-only, limits"
}

step_begin "1/4 packages"; install_packages; step_end
step_begin "2/4 engine"; start_engine; step_end
step_begin "3/4 image"; build_image; step_end
step_begin "4/4 verify"; verify_image; step_end
log "all done in $((SECONDS - SCRIPT_START)) s"
