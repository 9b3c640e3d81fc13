#!/bin/bash
# A simulated lab box that the harness does not start: a QEMU VM (TCG) whose
# disk holds stock Debian 12 (its own kernel, systemd, OpenSSH, kexec-tools,
# GRUB), booted by its firmware (SeaBIOS) through GRUB in the disk's MBR,
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
# harness cache, keyed by its package list and layout; each start boots a
# copy-on-write overlay of it, so a box always starts as it was made.
#
# GRUB is put on the disk by hand, as grub-install would on a real disk (which
# it cannot do to an image file from a chroot): a partitioned disk, boot.img
# in the MBR, core.img in the gap before the partition, its modules in
# /boot/grub/i386-pc, and a grub.cfg written here (update-grub cannot probe
# the device in a chroot) that does what Debian's generated one does for the
# harness: the Debian entry is the default, `grub-reboot` (next_entry in
# grubenv) picks another entry once, and /boot/grub/custom.cfg is sourced as
# Debian's 41_custom sources it. So a reset or a power cycle lands on Debian's
# kernel unless a one-shot entry was set for the next boot. Needs
# root, qemu-system-x86, mmdebstrap and ser2net (ci/setup.sh --test installs them).
set -euo pipefail

PACKAGES=linux-image-amd64,systemd-sysv,udev,openssh-server,kexec-tools,ifupdown,isc-dhcp-client,netbase,iproute2,initramfs-tools,grub-pc-bin,grub2-common
# The disk's layout and GRUB set-up below are part of the cache key too.
LAYOUT="bookworm v2 mbr+grub"
# the root file system's partition starts at 1 MiB, after the MBR and GRUB's core.img
PART_START=2048
CACHE="${CPA_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cpa-harness}/labbox"
SSH_PORT="${LABBOX_SSH_PORT:-10022}"
CONSOLE_PORT="${LABBOX_CONSOLE_PORT:-7001}"
MIRROR="${LABBOX_MIRROR:-http://deb.debian.org/debian}"

say() { echo "labbox: $*" >&2; }
die() { say "error: $*"; exit 3; }

image() {
    local key dir
    key=$(echo "$PACKAGES $LAYOUT" | sha256sum | cut -c1-16)
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
        basename "$dir.tmp"/root/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$dir.tmp/release"
        grub_setup "$dir.tmp"
        truncate -s 3G "$dir.tmp/disk.img"
        # one partition from 1 MiB to the end, its ext4 made in place
        mbr "$dir.tmp/disk.img"
        mke2fs -q -F -t ext4 -d "$dir.tmp/root" -E offset=$((PART_START * 512)) \
            "$dir.tmp/disk.img" $((3 * 1024 * 1024 - PART_START / 2))k
        # GRUB's boot sector (its code, not the partition table) and core.img in
        # the sectors after it, where boot.img and core.img's own blocklist
        # look for it by default (sector 1 on)
        dd if="$dir.tmp/boot.img" of="$dir.tmp/disk.img" bs=440 count=1 conv=notrunc status=none
        dd if="$dir.tmp/core.img" of="$dir.tmp/disk.img" bs=512 seek=1 conv=notrunc status=none
        rm -rf "$dir.tmp/root"
        mv "$dir.tmp" "$dir"
    fi
    exec 9>&-       # not inherited by the box's QEMU and ser2net
    echo "$dir"
}

mbr() {     # mbr DISK: an MS-DOS partition table, one bootable Linux partition
    # from PART_START to the end (what sfdisk writes, without needing it)
    python3 - "$1" "$PART_START" <<'EOF'
import os, struct, sys
path, start = sys.argv[1], int(sys.argv[2])
sectors = os.path.getsize(path) // 512 - start
# active, CHS unused (LBA only), type 0x83, LBA start and length; the 0x55AA mark
entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, sectors)
with open(path, "r+b") as f:
    f.seek(446)
    f.write(entry + bytes(48) + b"\x55\xaa")
EOF
}

grub_setup() {     # grub_setup DIR: GRUB on DIR/root, boot.img and core.img into DIR
    local dir=$1 root=$1/root release
    release=$(cat "$dir/release")
    [[ -f "$root/usr/lib/grub/i386-pc/boot.img" ]] || die "grub-pc-bin is not on the disk"
    # what grub-install copies, so that GRUB loads its modules from the disk
    mkdir -p "$root/boot/grub"
    cp -r "$root/usr/lib/grub/i386-pc" "$root/boot/grub/"
    cp "$root/usr/lib/grub/i386-pc/boot.img" "$dir/boot.img"
    # core.img with what it needs to reach /boot/grub; the rest is loaded from there
    chroot "$root" grub-mkimage -O i386-pc -o /tmp/core.img -p "(hd0,msdos1)/boot/grub" \
        biosdisk part_msdos ext2 normal configfile loadenv test echo linux serial terminal
    mv "$root/tmp/core.img" "$dir/core.img"
    (( $(stat -c %s "$dir/core.img") < (PART_START - 1) * 512 )) || die "core.img is too big"
    chroot "$root" grub-editenv /boot/grub/grubenv create
    # As Debian's 00_header, 10_linux and 41_custom make it, reduced to one
    # entry; GRUB on the serial line, as the kernel's console.
    cat > "$root/boot/grub/grub.cfg" <<EOF
# Written by ci/labbox.sh (not update-grub: it cannot probe a device in a chroot).
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
if [ -s \$prefix/grubenv ]; then
  load_env
fi
if [ "\${next_entry}" ] ; then
   set default="\${next_entry}"
   set next_entry=
   save_env next_entry
else
   set default="debian"
fi
set timeout=0
menuentry 'Debian GNU/Linux, with Linux $release' --id debian {
  echo 'Loading Linux $release ...'
  linux /boot/vmlinuz-$release root=/dev/vda1 rw console=ttyS0,115200 net.ifnames=0
  initrd /boot/initrd.img-$release
}
if [ -f  \${config_directory}/custom.cfg ]; then
  source \${config_directory}/custom.cfg
elif [ -z "\${config_directory}" -a -f  \$prefix/custom.cfg ]; then
  source \$prefix/custom.cfg
fi
EOF
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

[[ $# -eq 2 ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    power-off) power_off "$2" ;;
    power-on) power_on "$2" ;;
    power-cycle) power_off "$2"; power_on "$2" ;;
    reset) qmp "$2" system_reset ;;
    console-restart) console_off "$2"; sleep 2; console_on "$2" ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
