#!/bin/bash
# A simulated lab box that the harness does not start: a QEMU VM (TCG) whose
# disk holds stock Debian 12 (its own kernel, systemd, OpenSSH, kexec-tools),
# its serial console served by a real console server (ser2net) on 127.0.0.1,
# ssh forwarded on 127.0.0.1, and power commands that act through QEMU's QMP.
#
#   ci/labbox.sh start DIR       build the disk once (cached), boot the box, write DIR/lab.toml
#   ci/labbox.sh power-cycle DIR cold: QEMU quits and starts again on its own disk
#   ci/labbox.sh power-off DIR / power-on DIR
#   ci/labbox.sh reset DIR       warm: QMP system_reset
#   ci/labbox.sh console-restart DIR  the console server restarts: its clients are dropped
#   ci/labbox.sh stop DIR        power off and stop ser2net
#
# The disk is made with mmdebstrap from Debian's packages and kept under the
# harness cache, keyed by this script's package list; each start boots a
# copy-on-write overlay of it, so a box always starts as it was made. Needs
# root, qemu-system-x86, mmdebstrap and ser2net (ci/setup.sh --test installs them).
set -euo pipefail

PACKAGES=linux-image-amd64,systemd-sysv,udev,openssh-server,kexec-tools,ifupdown,isc-dhcp-client,netbase,iproute2,initramfs-tools
CACHE="${CPA_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cpa-harness}/labbox"
SSH_PORT="${LABBOX_SSH_PORT:-10022}"
CONSOLE_PORT="${LABBOX_CONSOLE_PORT:-7001}"
MIRROR="${LABBOX_MIRROR:-http://deb.debian.org/debian}"

say() { echo "labbox: $*" >&2; }
die() { say "error: $*"; exit 3; }

image() {
    local key dir
    key=$(echo "$PACKAGES bookworm v1" | sha256sum | cut -c1-16)
    dir="$CACHE/$key"
    mkdir -p "$CACHE"
    # One maker at a time: two harness processes (or test runs) sharing the
    # cache would otherwise build into the same temporary directory.
    exec 9>"$dir.lock"
    flock 9
    if [[ ! -f "$dir/disk.img" ]]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
        say "making the Debian 12 disk in $dir (a few minutes, once)"
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        mmdebstrap --variant=apt --include="$PACKAGES" \
            --customize-hook='echo labbox > "$1/etc/hostname"' \
            --customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
            bookworm "$dir.tmp/root" "deb $MIRROR bookworm main" > "$dir.tmp/mmdebstrap.log" 2>&1 \
            || die "mmdebstrap failed (log: $dir.tmp/mmdebstrap.log)"
        ssh-keygen -q -t ed25519 -N "" -C labbox -f "$dir.tmp/key"
        install -d -m 700 "$dir.tmp/root/root/.ssh"
        install -m 600 "$dir.tmp/key.pub" "$dir.tmp/root/root/.ssh/authorized_keys"
        cp "$dir.tmp/root/etc/ssh/ssh_host_ed25519_key.pub" "$dir.tmp/host_key.pub"
        cp "$dir.tmp"/root/boot/vmlinuz-* "$dir.tmp/vmlinuz"
        cp "$dir.tmp"/root/boot/initrd.img-* "$dir.tmp/initrd.img"
        basename "$dir.tmp"/root/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$dir.tmp/release"
        truncate -s 3G "$dir.tmp/disk.img"
        mke2fs -q -F -t ext4 -d "$dir.tmp/root" "$dir.tmp/disk.img"
        rm -rf "$dir.tmp/root"
        mv "$dir.tmp" "$dir"
    fi
    exec 9>&-       # not inherited by the box's QEMU and ser2net
    echo "$dir"
}

qmp() {     # qmp DIR COMMAND: one QMP command on the box's socket
    python3 - "$1/qmp.sock" "$2" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()                                    # the greeting
for cmd in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            break
    if "error" in reply:
        sys.exit(f"QMP {cmd}: {reply['error'].get('desc')}")
EOF
}

running() { [[ -f "$1/qemu.pid" ]] && kill -0 "$(cat "$1/qemu.pid")" 2>/dev/null; }

power_on() {
    local dir=$1 img
    running "$dir" && return 0
    img=$(cat "$dir/image")
    # the ports it was started with, whoever powers it on later
    SSH_PORT=$(cat "$dir/ssh_port")
    rm -f "$dir/qmp.sock"
    qemu-system-x86_64 -machine pc -accel tcg -cpu max -m 1024 -smp 2 -nodefaults \
        -display none -daemonize -pidfile "$dir/qemu.pid" \
        -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0" \
        -drive "file=$dir/overlay.qcow2,if=virtio,format=qcow2" \
        -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" \
        -chardev "socket,id=ser0,path=$dir/serial.sock,server=on,wait=off" -serial chardev:ser0 \
        -qmp "unix:$dir/qmp.sock,server=on,wait=off" > "$dir/qemu.log" 2>&1 \
        || die "QEMU did not start (log: $dir/qemu.log)"
}

power_off() {
    local dir=$1 pid
    running "$dir" || return 0
    pid=$(cat "$dir/qemu.pid")
    qmp "$dir" quit || kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

start() {
    local dir=$1 img
    command -v ser2net >/dev/null || die "ser2net is missing: apt-get install ser2net"
    command -v qemu-img >/dev/null || die "qemu-img is missing: apt-get install qemu-utils"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    img=$(image)
    echo "$img" > "$dir/image"
    echo "$SSH_PORT" > "$dir/ssh_port"
    [[ -f "$dir/overlay.qcow2" ]] || \
        qemu-img create -q -f qcow2 -b "$img/disk.img" -F raw "$dir/overlay.qcow2"
    power_on "$dir"
    # ser2net serves the line QEMU offers on a unix socket. It opens the socket
    # when a client connects: a client connected across a cold power cycle is
    # dropped with the old socket, and connects again.
    cat > "$dir/ser2net.yaml" <<EOF
connection: &labbox
  accepter: tcp,127.0.0.1,$CONSOLE_PORT
  connector: unix,$dir/serial.sock
  options:
    kickolduser: true
EOF
    console_on "$dir"
    local self
    self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
    cat > "$dir/lab.toml" <<EOF
# Written by ci/labbox.sh: the simulated box.
[box.labbox]
arch = "x86_64"
ssh = "root@127.0.0.1:$SSH_PORT"
key = "$img/key"
host_key = "$(cut -d' ' -f1,2 "$img/host_key.pub")"
console = "tcp://127.0.0.1:$CONSOLE_PORT"
power_cycle = "$self power-cycle $dir"
power_off = "$self power-off $dir"
power_on = "$self power-on $dir"
boot = "kexec_load"
# Its hardware is QEMU's, for which the cell's own small configuration has the
# drivers, and which builds in minutes; LABBOX_CONFIG=box starts from Debian's.
config = "${LABBOX_CONFIG:-cell}"
known_good = "$(cat "$img/release")"
EOF
    say "box up: ssh root@127.0.0.1 -p $SSH_PORT, console tcp://127.0.0.1:$CONSOLE_PORT," \
        "lab file $dir/lab.toml"
}

console_on() {
    local dir=$1
    if [[ ! -f "$dir/ser2net.pid" ]] || ! kill -0 "$(cat "$dir/ser2net.pid")" 2>/dev/null; then
        ser2net -c "$dir/ser2net.yaml" -P "$dir/ser2net.pid" > "$dir/ser2net.log" 2>&1 \
            || die "ser2net did not start (log: $dir/ser2net.log)"
    fi
}

console_off() {
    local dir=$1 pid
    [[ -f "$dir/ser2net.pid" ]] || return 0
    pid=$(cat "$dir/ser2net.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/ser2net.pid"
}

stop() {
    local dir=$1
    power_off "$dir"
    console_off "$dir"
}

[[ $# -eq 2 ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    power-off) power_off "$2" ;;
    power-on) power_on "$2" ;;
    power-cycle) power_off "$2"; power_on "$2" ;;
    reset) qmp "$2" system_reset ;;
    console-restart) console_off "$2"; sleep 2; console_on "$2" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
